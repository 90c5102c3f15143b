"""keras.layers: the built-in layers and the Layer base for custom ones."""
from .base import InputSpec, Layer
from .core import Activation, Dense, Dropout, Embedding, Flatten, Reshape
from .merging import Add, Average, Concatenate, Maximum, Multiply, Subtract
from .normalization import BatchNormalization
from .convolutional import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .wrappers import *  # noqa: F401,F403
from . import convolutional, pooling, recurrent, wrappers
from ..models import Input, InputLayer

__all__ = (["Layer", "InputSpec", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Embedding",
            "Add", "Subtract", "Multiply", "Average", "Maximum", "Concatenate", "BatchNormalization",
            "Input", "InputLayer"]
           + convolutional.__all__ + pooling.__all__ + recurrent.__all__ + wrappers.__all__)
