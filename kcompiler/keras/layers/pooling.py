"""Pooling layers: MaxPooling2D and AveragePooling2D (the max_pool2d / avg_pool2d ops)
and the global poolings (mean / max over the spatial axes)."""
from ...errors import ShapeError
from ...ir.types import fmt_shape
from ...ops.conv import output_size
from .. import backend, ops
from .base import InputSpec, Layer
from .convolutional import standardize_data_format, standardize_padding, standardize_tuple

__all__ = ["MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D",
           "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D", "GlobalMaxPool2D"]


class _Pooling2D(Layer):
    op = None  # the pooling op of the subclass

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = standardize_tuple(self, pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else standardize_tuple(self, strides, "strides")
        self.padding = standardize_padding(self, padding)
        self.data_format = standardize_data_format(self, data_format)
        self.input_spec = InputSpec(ndim=4)

    def build(self, input_shape):
        for axis in (0, 1):
            out = output_size(input_shape[1 + axis], self.pool_size[axis], self.strides[axis], 1, self.padding)
            if out is not None and out < 1:
                raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(input_shape)} is smaller than "
                                 f"pool_size={self.pool_size} (padding={self.padding!r}): the output would be "
                                 "empty")

    def call(self, inputs):
        return backend.apply_op(self.op, [inputs], pool=self.pool_size, strides=self.strides,
                                padding=self.padding)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "padding": self.padding,
                "strides": self.strides, "data_format": self.data_format}


class MaxPooling2D(_Pooling2D):
    op = "max_pool2d"


class AveragePooling2D(_Pooling2D):
    op = "avg_pool2d"


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(self, data_format)
        self.keepdims = bool(keepdims)
        self.input_spec = InputSpec(ndim=4)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    def call(self, inputs):
        return ops.mean(inputs, axis=(1, 2), keepdims=self.keepdims)


class GlobalMaxPooling2D(_GlobalPooling2D):
    def call(self, inputs):
        return ops.max(inputs, axis=(1, 2), keepdims=self.keepdims)


# Keras's aliases are the same classes (so the automatic names stay max_pooling2d, ...).
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
