"""Noise layers, active only in training: GaussianNoise, GaussianDropout, SpatialDropout1D/2D.

The noise comes from the counter-based generator of ``dropout`` (kcompiler/ops/nn.py): a pure
function of (seed, step, element), so the backward pass recomputes it and a seeded run is
reproducible; its statistics are Keras's, its bits are not. Spatial dropout draws one keep/drop
per (sample, channel): the dropout op on a (batch, 1[, 1], channels) tensor of ones, broadcast
over the positions by a multiply.
"""
import math

from .. import backend, ops
from .base import InputSpec, Layer
from .data_format import standardize_data_format

__all__ = ["GaussianNoise", "GaussianDropout", "SpatialDropout1D", "SpatialDropout2D"]


class GaussianNoise(Layer):
    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= stddev <= 1:
            raise ValueError("Invalid value received for argument `stddev`. Expected a float value between 0 and 1. "
                             f"Received: stddev={stddev}")
        self.stddev, self.seed = stddev, seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self.supports_masking = True

    def call(self, inputs, training=False):
        if training and self.stddev > 0:
            return ops.random_op("gaussian_noise", inputs, stddev=float(self.stddev), seed=int(self._op_seed))
        return inputs

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class GaussianDropout(Layer):
    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Invalid value received for argument `rate`. Expected a float value in [0, 1). "
                             f"Received: rate={rate}")
        self.rate, self.seed = rate, seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self.supports_masking = True

    def call(self, inputs, training=False):
        if training and self.rate > 0:
            stddev = math.sqrt(self.rate / (1.0 - self.rate))
            return ops.random_op("gaussian_dropout", inputs, stddev=stddev, seed=int(self._op_seed))
        return inputs

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class _SpatialDropout(Layer):
    rank = None  # spatial axes between batch and channels

    def __init__(self, rate, seed=None, name=None, dtype=None, **kwargs):
        kwargs.pop("noise_shape", None)  # tf.keras 2 wrote it (always None here)
        super().__init__(name=name, dtype=dtype, **kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"{self._describe()}: rate must be in [0, 1), got {rate}")
        self.rate, self.seed = float(rate), seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self.supports_masking = True
        self.input_spec = InputSpec(ndim=self.rank + 2)

    def call(self, inputs, training=False):
        if not (training and self.rate > 0):
            return inputs
        ones = ops.ones(self.noise_shape(inputs.shape), inputs.dtype)
        return ops.multiply(inputs, ops.dropout(ones, self.rate, self._op_seed))

    def noise_shape(self, shape):
        """One draw per sample and channel (channels last)."""
        return (shape[0],) + (1,) * self.rank + (shape[-1],)

    def get_config(self):
        # Keras 3's SpatialDropout config: exactly these keys (its constructor takes no others)
        return {"rate": self.rate, "seed": self.seed, "name": self.name, "dtype": self.dtype}


class SpatialDropout1D(_SpatialDropout):
    rank = 1


class SpatialDropout2D(_SpatialDropout):
    rank = 2

    def __init__(self, rate, data_format=None, seed=None, name=None, dtype=None, **kwargs):
        super().__init__(rate, seed=seed, name=name, dtype=dtype, **kwargs)
        self.data_format = standardize_data_format(self, data_format)

    def noise_shape(self, shape):
        if self.data_format == "channels_first":
            return (shape[0], shape[1], 1, 1)
        return super().noise_shape(shape)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}
