"""Convolution layers: conv2d, bias_add and the activation, as separate primitives that fusion
recombines. Channels-last (NHWC) data and (kh, kw, in, out) kernels, as in Keras;
channels_first layers compute the same between two layout transposes (data_format.py).

Conv1D is conv2d on the (N, 1, W, C) view of its (N, W, C) input and the (1, k, in, out) view
of its kernel (reshapes: no copy); 'causal' padding pads k - 1 dilated steps before the
sequence (one pad copy, as Keras) and convolves 'valid'. Conv2DTranspose is
conv2d_backward_input, which is exactly a transposed convolution: the gradient of a conv2d
whose input has the transposed convolution's output size (from Keras's rule, with
output_padding), with the layer's (kh, kw, filters, in) kernel as that conv2d's HWIO kernel.
"""
from numbers import Integral

from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from ...ops.conv import output_size
from .. import activations, backend, ops
from .base import InputSpec, Layer
from .core import kernel_bias_config, resolve_activation, set_kernel_bias_options
from .data_format import channel_axis, channels_last_call, channels_last_shape, standardize_data_format

__all__ = ["Conv1D", "Convolution1D", "Conv2D", "Convolution2D", "Conv2DTranspose", "Convolution2DTranspose"]


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


def standardize_padding(layer, padding, allowed=("valid", "same")):
    value = str(padding).lower()
    if value not in allowed:
        raise ValueError(f"{layer._describe()}: padding must be {' or '.join(repr(a) for a in allowed)}, got "
                         f"{padding!r}")
    return value


class _Conv(Layer):
    rank = None
    paddings = ("valid", "same")

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not _is_int(filters) or filters <= 0:
            raise ValueError(f"{self._describe()}: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = standardize_tuple(self, kernel_size, "kernel_size", self.rank)
        self.strides = standardize_tuple(self, strides, "strides", self.rank)
        self.padding = standardize_padding(self, padding, self.paddings)
        self.data_format = standardize_data_format(self, data_format)
        self.dilation_rate = standardize_tuple(self, dilation_rate, "dilation_rate", self.rank)
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
        self.input_spec = InputSpec(ndim=self.rank + 2)

    def build(self, input_shape):
        given = tuple(input_shape)
        if len(given) != self.rank + 2:
            raise ShapeError(f"{self._describe()} expects input of rank {self.rank + 2}, got shape "
                             f"{fmt_shape(given)}")
        input_shape = channels_last_shape(given, self.data_format)
        channels = input_shape[-1]
        if channels is None:
            raise ShapeError(f"{self._describe()}: the channel dimension of the input must be known, "
                             f"got input shape {fmt_shape(given)}")
        # Keras checks the output size when it builds, before any data flows.
        for axis in range(self.rank):
            size, padding = input_shape[1 + axis], self.padding
            if padding == "causal":  # padded before by the dilated kernel's reach, then 'valid'
                size = None if size is None else size + self.dilation_rate[axis] * (self.kernel_size[axis] - 1)
                padding = "valid"
            out = output_size(size, self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis], padding)
            if out is not None and out < 1:
                raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(given)} is too small "
                                 f"for kernel_size={self.kernel_size}, strides={self.strides}, "
                                 f"dilation_rate={self.dilation_rate}, padding={self.padding!r}: the output "
                                 "would be empty")
        self.kernel = self.add_weight(shape=self.kernel_size + (channels, self.filters),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.bias = (self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                     name="bias") if self.use_bias else None)
        self.input_spec = InputSpec(ndim=self.rank + 2, axes={channel_axis(self.data_format): channels})

    def _finish(self, y):
        if self.use_bias:
            y = backend.apply_op("bias_add", [y, self.bias])
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                **kernel_bias_config(self, activity_regularizer=True)}


class Conv2D(_Conv):
    rank = 2

    @channels_last_call
    def call(self, inputs):
        return self._finish(backend.apply_op("conv2d", [inputs, self.kernel], strides=self.strides,
                                             padding=self.padding, dilation=self.dilation_rate))


class Conv1D(_Conv):
    rank = 1
    paddings = ("valid", "same", "causal")

    @channels_last_call
    def call(self, inputs):
        padding = self.padding
        if padding == "causal":
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            inputs, padding = ops.pad(inputs, ((0, 0), (left, 0), (0, 0))), "valid"
        row = ops.reshape(inputs, (0, 1, -1, inputs.shape[2]))
        kernel = ops.reshape(self.kernel, (1,) + tuple(self.kernel.shape))
        y = backend.apply_op("conv2d", [row, kernel], strides=(1,) + self.strides, padding=padding,
                             dilation=(1,) + self.dilation_rate)
        # bias and activation on the 4-D product, so fusion can make them its epilogue
        y = self._finish(y)
        return ops.reshape(y, (0, -1, self.filters))


class Conv2DTranspose(Layer):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
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
        self.output_padding = None
        if output_padding is not None:
            pads = (output_padding,) * 2 if _is_int(output_padding) else tuple(output_padding)
            if len(pads) != 2 or not all(_is_int(p) and p >= 0 for p in pads):
                raise ValueError(f"{self._describe()}: output_padding must be an integer or a tuple of 2 "
                                 f"non-negative integers, got {output_padding!r}")
            for i, (pad, stride) in enumerate(zip(pads, self.strides)):
                if pad >= stride:
                    raise ValueError(f"{self._describe()}: `output_padding` must be strictly less than `strides` "
                                     f"for all dimensions. At dimension {i}, `output_padding` is {pad} but "
                                     f"`strides` is {stride}. Received: output_padding={pads}, "
                                     f"strides={self.strides}")
            self.output_padding = tuple(int(p) for p in pads)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self._describe()}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.activation = resolve_activation(self, activation)
        set_kernel_bias_options(self, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                                bias_regularizer, kernel_constraint, bias_constraint)
        self.input_spec = InputSpec(ndim=4)

    def build(self, input_shape):
        channels = channels_last_shape(input_shape, self.data_format)[-1]
        if len(input_shape) != 4 or channels is None:
            raise ShapeError(f"{self._describe()} expects input of rank 4 with known channels, got shape "
                             f"{fmt_shape(input_shape)}")
        self.kernel = self.add_weight(shape=self.kernel_size + (self.filters, channels),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.bias = (self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                     name="bias") if self.use_bias else None)
        self.input_spec = InputSpec(ndim=4, axes={channel_axis(self.data_format): channels})

    def output_hw(self, input_shape):
        """Keras's output size per spatial axis (TensorFlow's conv_transpose rule) for a channels_last
        input shape."""
        sizes = []
        for axis in (0, 1):
            size = input_shape[1 + axis]
            if size is None:
                raise UnsupportedError(f"{self._describe()}: the spatial size of the input must be known, got "
                                       f"{fmt_shape(input_shape)}")
            stride, pad = self.strides[axis], None if self.output_padding is None else self.output_padding[axis]
            reach = (self.kernel_size[axis] - 1) * self.dilation_rate[axis] + 1
            if self.padding == "valid":
                sizes.append((size - 1) * stride + reach + (max(reach, stride) - reach if pad is None else pad))
            else:
                sizes.append(size * stride if pad is None else (size - 1) * stride + reach % 2 + pad)
        return tuple(sizes)

    @channels_last_call
    def call(self, inputs):
        y = backend.apply_op("conv2d_backward_input", [inputs, self.kernel], input_hw=self.output_hw(inputs.shape),
                             strides=self.strides, padding=self.padding, dilation=self.dilation_rate)
        if self.use_bias:
            y = backend.apply_op("bias_add", [y, self.bias])
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "output_padding": self.output_padding,
                "data_format": self.data_format, "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                **kernel_bias_config(self, activity_regularizer=True)}


Convolution2D = Conv2D  # Keras's aliases
Convolution1D = Conv1D
Convolution2DTranspose = Conv2DTranspose
