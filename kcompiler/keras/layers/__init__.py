"""keras.layers: the built-in layers and the Layer base for custom ones."""
from .base import InputSpec, Layer
from .core import Activation, Dense, Dropout, Embedding, Flatten, Reshape
from .merging import Add, Average, Concatenate, Maximum, Multiply, Subtract
from .normalization import BatchNormalization
from ..models import Input, InputLayer

__all__ = ["Layer", "InputSpec", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Embedding",
           "Add", "Subtract", "Multiply", "Average", "Maximum", "Concatenate", "BatchNormalization",
           "Input", "InputLayer"]
