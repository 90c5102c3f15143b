"""keras.layers: the built-in layers and the Layer base for custom ones."""
from .base import InputSpec, Layer
from .core import Activation, Dense, Dropout, Embedding, Flatten, Identity, Masking, Reshape
from .merging import Add, Average, Concatenate, Dot, Maximum, Multiply, Subtract
from .normalization import BatchNormalization, GroupNormalization, LayerNormalization
from .activation import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .convolutional import *  # noqa: F401,F403
from .depthwise import *  # noqa: F401,F403
from .lambda_layer import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .preprocessing import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .regularization import *  # noqa: F401,F403
from .reshaping import *  # noqa: F401,F403
from .wrappers import *  # noqa: F401,F403
from . import activation, attention, convolutional, depthwise, lambda_layer, pooling, preprocessing, recurrent, regularization
from . import reshaping, wrappers
from ..models import Input, InputLayer

__all__ = (["Layer", "InputSpec", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Embedding", "Masking",
            "Identity", "Add", "Subtract", "Multiply", "Average", "Maximum", "Concatenate", "Dot",
            "BatchNormalization", "LayerNormalization", "GroupNormalization", "Input", "InputLayer"]
           + activation.__all__ + attention.__all__ + convolutional.__all__ + depthwise.__all__ + lambda_layer.__all__ + pooling.__all__
           + preprocessing.__all__ + recurrent.__all__ + regularization.__all__ + reshaping.__all__
           + wrappers.__all__)
