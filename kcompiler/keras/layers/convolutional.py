"""Conv2D: conv2d, bias_add and the activation, as separate primitives that fusion
recombines. Channels-last (NHWC) data and (kh, kw, in, out) kernels, as in Keras."""
from numbers import Integral

from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from ...ops.conv import output_size
from .. import activations, backend
from .base import InputSpec, Layer
from .core import kernel_bias_config, resolve_activation, set_kernel_bias_options

__all__ = ["Conv2D", "Convolution2D"]


def standardize_tuple(layer, value, name, n=2):
    """Keras's int-or-tuple arguments: 3 -> (3, 3); (2, 3) stays; anything else is an error."""
    given = value
    if _is_int(value):
        value = (value,) * n
    try:
        value = tuple(value)
    except TypeError:
        value = None
    if value is None or len(value) != n or not all(_is_int(v) for v in value):
        raise ValueError(f"{layer._describe()}: {name} must be an integer or a tuple of {n} integers, "
                         f"got {given!r}")
    if any(v <= 0 for v in value):
        raise ValueError(f"{layer._describe()}: {name} must be positive, got {value}")
    return tuple(int(v) for v in value)


def _is_int(value):
    return isinstance(value, Integral) and not isinstance(value, bool)


def standardize_padding(layer, padding):
    value = str(padding).lower()
    if value not in ("valid", "same"):
        raise ValueError(f"{layer._describe()}: padding must be 'valid' or 'same', got {padding!r}")
    return value


def standardize_data_format(layer, data_format):
    value = "channels_last" if data_format is None else str(data_format).lower()
    if value == "channels_first":
        raise UnsupportedError(f"{layer._describe()}: data_format='channels_first' is not supported; "
                               "kcompiler layers take channels_last (NHWC) data")
    if value != "channels_last":
        raise ValueError(f"{layer._describe()}: data_format must be 'channels_last' or 'channels_first', "
                         f"got {data_format!r}")
    return value


class Conv2D(Layer):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not _is_int(filters) or filters <= 0:
            raise ValueError(f"{self._describe()}: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = standardize_tuple(self, kernel_size, "kernel_size")
        self.strides = standardize_tuple(self, strides, "strides")
        self.padding = standardize_padding(self, padding)
        self.data_format = standardize_data_format(self, data_format)
        self.dilation_rate = standardize_tuple(self, dilation_rate, "dilation_rate")
        if groups != 1:
            raise UnsupportedError(f"{self._describe()}: groups={groups!r} is not supported (only groups=1)")
        self.groups = groups
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self._describe()}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.activation = resolve_activation(self, activation)
        set_kernel_bias_options(self, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                                bias_regularizer, kernel_constraint, bias_constraint)
        self.input_spec = InputSpec(ndim=4)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ShapeError(f"{self._describe()} expects input of rank 4, got shape {fmt_shape(input_shape)}")
        channels = input_shape[-1]
        if channels is None:
            raise ShapeError(f"{self._describe()}: the channel dimension of the input must be known, "
                             f"got input shape {fmt_shape(input_shape)}")
        # Keras checks the output size when it builds, before any data flows.
        for axis in (0, 1):
            out = output_size(input_shape[1 + axis], self.kernel_size[axis], self.strides[axis],
                              self.dilation_rate[axis], self.padding)
            if out is not None and out < 1:
                raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(input_shape)} is too small "
                                 f"for kernel_size={self.kernel_size}, strides={self.strides}, "
                                 f"dilation_rate={self.dilation_rate}, padding={self.padding!r}: the output "
                                 "would be empty")
        self.kernel = self.add_weight(shape=self.kernel_size + (channels, self.filters),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.bias = (self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                     name="bias") if self.use_bias else None)
        self.input_spec = InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs):
        y = backend.apply_op("conv2d", [inputs, self.kernel], strides=self.strides, padding=self.padding,
                             dilation=self.dilation_rate)
        if self.use_bias:
            y = backend.apply_op("bias_add", [y, self.bias])
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                **kernel_bias_config(self, activity_regularizer=True)}


Convolution2D = Conv2D  # Keras's alias
