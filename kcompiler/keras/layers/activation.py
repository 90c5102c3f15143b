"""Activation layers: Softmax (with a mask), ReLU, LeakyReLU, PReLU, ELU.

Each is element-wise math (or the softmax reduction) that fusion joins with its neighbours;
PReLU's alpha is a weight broadcast over its shared axes."""
from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import activations, constraints, initializers, ops, regularizers
from .base import InputSpec, Layer

__all__ = ["Softmax", "ReLU", "LeakyReLU", "PReLU", "ELU"]

# Keras 3 puts this where the mask is off, so exp() of it is 0.
LARGE_NEGATIVE = -1e9


class Softmax(Layer):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        self.supports_masking = True

    def _check_mask(self, inputs, mask):
        if len(mask.shape) > len(inputs.shape) or any(
                m is not None and i is not None and m not in (1, i)
                for m, i in zip(reversed(mask.shape), reversed(inputs.shape))):
            raise ValueError(f"{self._describe()}: the `mask` must be broadcastable to `inputs` (each mask "
                             f"dimension 1 or equal to the input's). Received: inputs.shape="
                             f"{fmt_shape(inputs.shape)}, mask.shape={fmt_shape(mask.shape)}")

    def call(self, inputs, mask=None):
        if mask is not None:
            self._check_mask(inputs, mask)
            if mask.dtype != "bool":
                mask = ops.greater(mask, 0.5)
            inputs = ops.where(mask, inputs, LARGE_NEGATIVE)
        outputs = self._softmax(inputs)
        if mask is not None:
            outputs = ops.where(mask, outputs, 0.0)
        return outputs

    def _softmax(self, x):
        rank = len(x.shape)
        axes = sorted({a % rank for a in self.axis}) if isinstance(self.axis, list) else [self.axis % rank]
        if len(axes) == 1:
            return ops.softmax(x, axis=axes[0])
        if axes != list(range(rank - len(axes), rank)) or None in x.shape[axes[0]:]:
            raise UnsupportedError(f"{self._describe()}: a softmax over several axes must be over the trailing "
                                   f"axes of known size, got axis={self.axis} for input {fmt_shape(x.shape)}")
        flat = ops.reshape(x, tuple(0 if i == 0 else d for i, d in enumerate(x.shape[:axes[0]])) + (-1,))
        y = ops.softmax(flat, axis=-1)
        return ops.reshape(y, (0,) + tuple(x.shape[1:]))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class ReLU(Layer):
    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0.0:
            raise ValueError(f"max_value of a ReLU layer cannot be a negative value. Received: max_value={max_value}")
        if negative_slope is None or negative_slope < 0.0:
            raise ValueError("negative_slope of a ReLU layer cannot be None or a negative value. Received: "
                             f"negative_slope={negative_slope}")
        if threshold is None or threshold < 0.0:
            raise ValueError(f"threshold of a ReLU layer cannot be None or a negative value. Received: "
                             f"threshold={threshold}")
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold
        self.supports_masking = True

    def call(self, inputs):
        return activations.relu(inputs, negative_slope=self.negative_slope, max_value=self.max_value,
                                threshold=self.threshold)

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class LeakyReLU(Layer):
    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:  # Keras 2's name, still accepted by Keras 3
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        if negative_slope is None or negative_slope < 0:
            raise ValueError("The negative_slope value of a Leaky ReLU layer cannot be None or negative value. "
                             f"Expected a float. Received: negative_slope={negative_slope}")
        self.negative_slope = negative_slope
        self.supports_masking = True

    def call(self, inputs):
        return ops.leaky_relu(inputs, negative_slope=self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(Layer):
    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha
        self.supports_masking = True

    def call(self, inputs):
        return ops.elu(inputs, alpha=self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class PReLU(Layer):
    def __init__(self, alpha_initializer="Zeros", alpha_regularizer=None, alpha_constraint=None, shared_axes=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self.alpha_constraint = constraints.get(alpha_constraint)
        if shared_axes is None:
            self.shared_axes = None
        else:
            self.shared_axes = list(shared_axes) if isinstance(shared_axes, (list, tuple)) else [shared_axes]

    def build(self, input_shape):
        param_shape = list(input_shape[1:])
        for axis in self.shared_axes or []:
            if not 1 <= axis < len(input_shape):
                raise ValueError(f"{self._describe()}: shared_axes {self.shared_axes} must name axes 1.."
                                 f"{len(input_shape) - 1} of the input {fmt_shape(input_shape)}")
            param_shape[axis - 1] = 1
        if None in param_shape:
            raise ShapeError(f"{self._describe()}: the axes that are not shared must have a known size, got input "
                             f"{fmt_shape(input_shape)} with shared_axes={self.shared_axes}")
        self.alpha = self.add_weight(shape=param_shape, name="alpha", initializer=self.alpha_initializer,
                                     regularizer=self.alpha_regularizer, constraint=self.alpha_constraint)
        axes = {i: input_shape[i] for i in range(1, len(input_shape)) if i not in (self.shared_axes or [])}
        self.input_spec = InputSpec(ndim=len(input_shape), axes=axes)

    def call(self, inputs):
        return ops.subtract(ops.relu(inputs), ops.multiply(self.alpha, ops.relu(ops.negative(inputs))))

    def get_config(self):
        return {**super().get_config(), "alpha_initializer": initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
                "alpha_constraint": constraints.serialize(self.alpha_constraint), "shared_axes": self.shared_axes}
