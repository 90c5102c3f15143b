"""The tf.keras-compatible front end: ``from kcompiler import keras``."""
from ..runtime.collector import older_objects_frozen

# importing the front end (and networkx, llvmlite) allocates ~100k long-lived objects: the
# collections that triggers skip what the process had before (runtime/collector.py)
with older_objects_frozen():
    from . import activations, backend, constraints, initializers, ops, regularizers
    from . import layers
    from .models import Input, InputLayer, Model, Sequential
    from .variables import Variable
    from .tape import GradientTape
    from . import models_api as models
    from . import utils
    from . import losses, metrics, optimizers, saving
    from . import callbacks, datasets, preprocessing
    from . import config, distribution
    from .losses import Loss
    from .metrics import Metric
    from .optimizers import Optimizer


__all__ = ["GradientTape", "Sequential", "Model", "Input", "InputLayer", "Variable", "layers", "activations", "ops",
           "initializers", "regularizers", "constraints", "backend", "models", "utils", "losses", "metrics",
           "optimizers", "saving", "callbacks", "datasets", "preprocessing", "config", "distribution", "Loss",
           "Metric", "Optimizer"]
