"""keras.datasets: mnist, cifar10, cifar100, loaded from the Keras cache (~/.keras/datasets)
and downloaded there only when missing."""
from . import cifar10, cifar100, mnist

__all__ = ["cifar10", "cifar100", "mnist"]
