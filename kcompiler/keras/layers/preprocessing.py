"""Preprocessing layers that are model math: Rescaling and Normalization (with ``adapt``).

Normalization keeps the statistics ``adapt`` measures in non-trainable weights ``mean``,
``variance`` and ``count`` (Keras 3's three, so its files load), or in constants when mean and
variance are given. ``adapt`` computes them with keras.ops (generated kernels): the whole
array at once, or batch by batch with Keras's running combination of means and variances.
"""
import numpy as np

from ...errors import ShapeError
from ...ir.types import fmt_shape
from .. import ops
from ..tensor import Tensor
from .base import Layer

__all__ = ["Rescaling", "Normalization"]

EPSILON = 1e-7   # keras.backend.epsilon(): the smallest standard deviation divided by


def _as_float(inputs):
    return inputs if inputs.dtype == "float32" else ops.cast(inputs, "float32")


def _constant(value):
    """A number as a float (inlined in the kernel), a per-channel list as a float32 array."""
    return float(value) if isinstance(value, (int, float)) else np.asarray(value, np.float32)


def _config_value(value):
    """A scale, offset, mean or variance as plain JSON: numbers stay, arrays become lists."""
    return np.asarray(value).tolist() if isinstance(value, (np.ndarray, list, tuple)) else value


class Rescaling(Layer):
    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = scale, offset
        self.supports_masking = True

    def call(self, inputs):
        return ops.add(ops.multiply(_as_float(inputs), _constant(self.scale)), _constant(self.offset))

    def get_config(self):
        return {**super().get_config(), "scale": _config_value(self.scale), "offset": _config_value(self.offset)}


class Normalization(Layer):
    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        self.axis = () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
        self.input_mean, self.input_variance = mean, variance
        self.invert = invert
        self.supports_masking = True
        if (mean is not None) != (variance is not None):
            raise ValueError("When setting values directly, both `mean` and `variance` must be set. Received: "
                             f"mean={mean} and variance={variance}")
        if mean is not None and np.shape(mean) != np.shape(variance):
            raise ValueError("When setting values directly, `mean` and `variance` must have the same shape. "
                             f"Received: mean shape {np.shape(mean)} and variance shape {np.shape(variance)}")
        self._build_input_shape = None

    def build(self, input_shape):
        ndim = len(input_shape)
        if any(a < -ndim or a >= ndim for a in self.axis):
            raise ValueError(f"All `axis` values must be in the range [-ndim, ndim). Received inputs with "
                             f"ndim={ndim}, while axis={self.axis}")
        self._build_input_shape = tuple(input_shape)
        self._keep_axis = tuple(sorted(a % ndim for a in self.axis))
        if any(input_shape[a] is None for a in self._keep_axis):
            raise ValueError(f"All `axis` values to be kept must have a known shape. Received axis={self.axis}, "
                             f"inputs.shape={fmt_shape(input_shape)}")
        self._reduce_axis = tuple(a for a in range(ndim) if a not in self._keep_axis)
        self._broadcast_shape = tuple(input_shape[a] if a in self._keep_axis else 1 for a in range(ndim))
        self._statistics_shape = tuple(input_shape[a] for a in self._keep_axis)
        if self.input_mean is None:
            self.adapt_mean = self.add_weight(name="mean", shape=self._statistics_shape, initializer="zeros",
                                              trainable=False)
            self.adapt_variance = self.add_weight(name="variance", shape=self._statistics_shape,
                                                  initializer="ones", trainable=False)
            self.count = self.add_weight(name="count", shape=(), dtype="int64", initializer="zeros",
                                         trainable=False)

    def _given(self, value):
        """A given mean/variance broadcast to the input's rank (its axes are the last kept ones)."""
        value = np.asarray(value, np.float32)
        shape = [1] * len(self._broadcast_shape)
        for i, size in enumerate(reversed(value.shape)):
            shape[self._keep_axis[-1 - i]] = size
        return np.ascontiguousarray(np.broadcast_to(value.reshape(shape), self._broadcast_shape))

    def _statistics(self):
        if self.input_mean is not None:
            return self._given(self.input_mean), self._given(self.input_variance)
        if self._keep_axis == tuple(range(len(self._broadcast_shape) - len(self._keep_axis),
                                          len(self._broadcast_shape))):
            return self.adapt_mean, self.adapt_variance   # broadcasts as it is
        return (ops.reshape(self.adapt_mean, self._broadcast_shape),
                ops.reshape(self.adapt_variance, self._broadcast_shape))

    def call(self, inputs):
        mean, variance = self._statistics()
        std = ops.maximum(ops.sqrt(variance), EPSILON)
        x = _as_float(inputs)
        if self.invert:
            return ops.add(mean, ops.multiply(x, std))
        return ops.divide(ops.subtract(x, mean), std)

    def adapt(self, data):
        """Set mean and variance to those of ``data`` over the axes that are not kept: an array,
        or an iterable of batches (arrays, or (x, y) tuples)."""
        batches = [data] if hasattr(data, "shape") else iter(data)
        total_mean = total_var = None
        total_count = 0
        for batch in batches:
            batch = batch[0] if isinstance(batch, tuple) else batch
            batch = np.asarray(batch.numpy() if isinstance(batch, Tensor) else batch, np.float32)
            if not self.built:
                self.build(batch.shape)
                self.built = True
            elif any(batch.shape[a] != self._build_input_shape[a] for a in self._keep_axis):
                raise ShapeError(f"{self._describe()}: adapt() got data of shape {batch.shape}, incompatible with "
                                 f"the input shape {fmt_shape(self._build_input_shape)} the layer was built for")
            axes = self._reduce_axis or None
            mean = ops.mean(batch, axis=axes) if axes else ops.convert_to_tensor(batch)
            var = ops.var(batch, axis=axes) if axes else ops.zeros_like(mean)
            count = int(np.prod([batch.shape[a] for a in self._reduce_axis], dtype=np.int64))
            if total_mean is None:
                total_mean, total_var, total_count = mean, var, count
                continue
            total_count += count
            weight = count / total_count
            new_mean = ops.add(ops.multiply(total_mean, 1.0 - weight), ops.multiply(mean, weight))
            total_var = ops.add(
                ops.multiply(ops.add(total_var, ops.square(ops.subtract(total_mean, new_mean))), 1.0 - weight),
                ops.multiply(ops.add(var, ops.square(ops.subtract(mean, new_mean))), weight))
            total_mean = new_mean
        if total_mean is None:
            raise ValueError(f"{self._describe()}: adapt() received no data")
        if self.input_mean is None:
            self.adapt_mean.assign(np.asarray(total_mean.numpy(), np.float32).reshape(self._statistics_shape))
            self.adapt_variance.assign(np.asarray(total_var.numpy(), np.float32).reshape(self._statistics_shape))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "invert": self.invert,
                "mean": _config_value(self.input_mean), "variance": _config_value(self.input_variance)}
