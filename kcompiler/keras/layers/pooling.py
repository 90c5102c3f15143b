"""Pooling layers: MaxPooling2D and AveragePooling2D (the max_pool2d / avg_pool2d ops), their
1-D forms (the same ops on the (N, 1, W, C) view of (N, W, C): a reshape, no copy), and the
global poolings (mean / max over the spatial axes; GlobalAveragePooling1D with a mask is the
masked sum over the steps divided by the number of unmasked steps, as Keras). channels_first
layers pool their channels_last view (data_format.py); a global pooling's (N, C) result is the
same in both formats, with keepdims it goes back to (N, C, 1[, 1])."""
from ...errors import ShapeError
from ...ir.types import fmt_shape
from ...ops.conv import output_size
from .. import backend, ops
from .base import InputSpec, Layer
from .convolutional import standardize_padding, standardize_tuple
from .data_format import channels_last_call, channels_last_shape, standardize_data_format

__all__ = ["MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D",
           "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D", "GlobalMaxPool2D",
           "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D",
           "GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D"]


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
        spatial = channels_last_shape(input_shape, self.data_format)[1:3]
        for axis in (0, 1):
            out = output_size(spatial[axis], self.pool_size[axis], self.strides[axis], 1, self.padding)
            if out is not None and out < 1:
                raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(input_shape)} is smaller than "
                                 f"pool_size={self.pool_size} (padding={self.padding!r}): the output would be "
                                 "empty")

    @channels_last_call
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
    @channels_last_call
    def call(self, inputs):
        return ops.mean(inputs, axis=(1, 2), keepdims=self.keepdims)


class GlobalMaxPooling2D(_GlobalPooling2D):
    @channels_last_call
    def call(self, inputs):
        return ops.max(inputs, axis=(1, 2), keepdims=self.keepdims)


class _Pooling1D(Layer):
    op = None

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = standardize_tuple(self, pool_size, "pool_size", n=1)
        self.strides = self.pool_size if strides is None else standardize_tuple(self, strides, "strides", n=1)
        self.padding = standardize_padding(self, padding)
        self.data_format = standardize_data_format(self, data_format)
        self.input_spec = InputSpec(ndim=3)

    def build(self, input_shape):
        steps = channels_last_shape(input_shape, self.data_format)[1]
        out = output_size(steps, self.pool_size[0], self.strides[0], 1, self.padding)
        if out is not None and out < 1:
            raise ShapeError(f"{self._describe()}: input of shape {fmt_shape(input_shape)} is shorter than "
                             f"pool_size={self.pool_size} (padding={self.padding!r}): the output would be empty")

    @channels_last_call
    def call(self, inputs):
        row = ops.reshape(inputs, (0, 1) + tuple(-1 if d is None else d for d in inputs.shape[1:]))
        y = backend.apply_op(self.op, [row], pool=(1,) + self.pool_size, strides=(1,) + self.strides,
                             padding=self.padding)
        return ops.reshape(y, (0,) + tuple(-1 if d is None else d for d in y.shape[2:]))

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "padding": self.padding,
                "strides": self.strides, "data_format": self.data_format}


class MaxPooling1D(_Pooling1D):
    op = "max_pool2d"


class AveragePooling1D(_Pooling1D):
    op = "avg_pool2d"

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        # Keras 3 has no default pool size here (MaxPooling1D's is 2)
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class _GlobalPooling1D(_GlobalPooling2D):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.input_spec = InputSpec(ndim=3)


class GlobalAveragePooling1D(_GlobalPooling1D):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.supports_masking = True

    @channels_last_call
    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1, keepdims=self.keepdims)
        keep = ops.expand_dims(mask if mask.dtype == "bool" else ops.cast(mask, "bool"), 2)
        total = ops.sum(ops.where(keep, inputs, 0.0), axis=1, keepdims=self.keepdims)
        return ops.divide(total, ops.sum(ops.cast(keep, inputs.dtype), axis=1, keepdims=self.keepdims))

    def compute_mask(self, inputs, mask=None):
        return None


class GlobalMaxPooling1D(_GlobalPooling1D):
    # Keras 3 ignores a mask here (the maximum runs over every step)
    @channels_last_call
    def call(self, inputs):
        return ops.max(inputs, axis=1, keepdims=self.keepdims)


# Keras's aliases are the same classes (so the automatic names stay max_pooling2d, ...).
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
