"""DepthwiseConv2D and SeparableConv2D (Keras 3's arguments, weights and configs).

DepthwiseConv2D is the ``depthwise_conv2d`` op (ops/depthwise.py), then bias_add and the
activation, so that fusion makes them, and a BatchNormalization and ReLU6 after them in
inference, the epilogue of its kernel. SeparableConv2D is the same depthwise op without a
bias, then its pointwise part: a 1x1 ``conv2d`` (x is its own column matrix: one GEMM), with
the bias and the activation as that product's epilogue. Strides and dilation apply to the
depthwise part, as in TensorFlow's separable_conv2d.
"""
from ...errors import ShapeError
from ...ir.types import fmt_shape
from ...ops.conv import output_size
from .. import activations, backend, constraints, initializers, regularizers
from .base import InputSpec, Layer
from .convolutional import _is_int, standardize_data_format, standardize_padding, standardize_tuple
from .core import resolve_activation

__all__ = ["DepthwiseConv2D", "SeparableConv2D", "SeparableConvolution2D"]


class _DepthwiseBase(Layer):
    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not _is_int(depth_multiplier) or depth_multiplier <= 0:
            raise ValueError(f"{self._describe()}: Invalid value for argument `depth_multiplier`. Expected a "
                             f"strictly positive value. Received depth_multiplier={depth_multiplier!r}.")
        self.depth_multiplier = int(depth_multiplier)
        self.kernel_size = standardize_tuple(self, kernel_size, "kernel_size")
        self.strides = standardize_tuple(self, strides, "strides")
        self.padding = standardize_padding(self, padding)
        self.data_format = standardize_data_format(self, data_format)
        self.dilation_rate = standardize_tuple(self, dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self._describe()}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.activation = resolve_activation(self, activation)
        self.use_bias = use_bias
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = InputSpec(ndim=4)

    def _channels(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ShapeError(f"{self._describe()} expects input of rank 4 with known channels, got shape "
                             f"{fmt_shape(input_shape)}")
        for axis in (0, 1):
            out = output_size(input_shape[1 + axis], self.kernel_size[axis], self.strides[axis],
                              self.dilation_rate[axis], self.padding)
            if out is not None and out < 1:
                raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(input_shape)} is too small "
                                 f"for kernel_size={self.kernel_size}, strides={self.strides}, "
                                 f"dilation_rate={self.dilation_rate}, padding={self.padding!r}: the output "
                                 "would be empty")
        self.input_spec = InputSpec(ndim=4, axes={-1: input_shape[-1]})
        return input_shape[-1]

    def _depthwise_kernel(self, channels, name):
        return self.add_weight(shape=self.kernel_size + (channels, self.depth_multiplier),
                               initializer=self.depthwise_initializer, regularizer=self.depthwise_regularizer,
                               constraint=self.depthwise_constraint, name=name)

    def _bias(self, size):
        return (self.add_weight(shape=(size,), initializer=self.bias_initializer, regularizer=self.bias_regularizer,
                                constraint=self.bias_constraint, name="bias") if self.use_bias else None)

    def _depthwise(self, inputs, kernel):
        return backend.apply_op("depthwise_conv2d", [inputs, kernel], strides=self.strides, padding=self.padding,
                                dilation=self.dilation_rate)

    def _finish(self, y):
        if self.use_bias:
            y = backend.apply_op("bias_add", [y, self.bias])
        return self.activation(y)

    def _head_config(self):
        return {**Layer.get_config(self), "depth_multiplier": self.depth_multiplier}

    def _window_config(self):
        return {"kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding,
                "data_format": self.data_format, "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer)}


class DepthwiseConv2D(_DepthwiseBase):
    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.kernel = self._depthwise_kernel(channels, "kernel")
        self.bias = self._bias(channels * self.depth_multiplier)

    def call(self, inputs):
        return self._finish(self._depthwise(inputs, self.kernel))

    def get_config(self):
        return {**self._head_config(), **self._window_config(),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                "depthwise_constraint": constraints.serialize(self.depthwise_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint)}


class SeparableConv2D(_DepthwiseBase):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding, depth_multiplier=depth_multiplier,
                         data_format=data_format, dilation_rate=dilation_rate, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer, depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer, activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint, bias_constraint=bias_constraint, **kwargs)
        if not _is_int(filters) or filters <= 0:
            raise ValueError(f"{self._describe()}: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.pointwise_constraint = constraints.get(pointwise_constraint)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.depthwise_kernel = self._depthwise_kernel(channels, "depthwise_kernel")
        self.pointwise_kernel = self.add_weight(
            shape=(1, 1, channels * self.depth_multiplier, self.filters), initializer=self.pointwise_initializer,
            regularizer=self.pointwise_regularizer, constraint=self.pointwise_constraint, name="pointwise_kernel")
        self.bias = self._bias(self.filters)

    def call(self, inputs):
        y = self._depthwise(inputs, self.depthwise_kernel)
        return self._finish(backend.apply_op("conv2d", [y, self.pointwise_kernel], strides=(1, 1), padding="valid",
                                             dilation=(1, 1)))

    def get_config(self):
        return {**self._head_config(), "filters": self.filters, **self._window_config(),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "pointwise_regularizer": regularizers.serialize(self.pointwise_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                "depthwise_constraint": constraints.serialize(self.depthwise_constraint),
                "pointwise_constraint": constraints.serialize(self.pointwise_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint)}


SeparableConvolution2D = SeparableConv2D  # Keras's alias
