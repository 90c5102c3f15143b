"""Reshaping layers: RepeatVector, Permute, ZeroPadding2D, Cropping2D, UpSampling2D.

All are data movement (broadcast_to, transpose, pad, slice: one copy each), except bilinear
upsampling (the upsample_bilinear op). Nearest-neighbour upsampling is a broadcast of a
reshaped view: (N, H, 1, W, 1, C) -> (N, H, fh, W, fw, C), read back as (N, H*fh, W*fw, C).
The image layers take channels_first data through their channels_last view (data_format.py).
"""
from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import backend, ops
from .base import InputSpec, Layer
from .convolutional import standardize_tuple
from .data_format import channels_last_call, standardize_data_format

__all__ = ["RepeatVector", "Permute", "ZeroPadding2D", "Cropping2D", "UpSampling2D"]


class RepeatVector(Layer):
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"Expected an integer value for `n`, got {type(n)}.")
        if n <= 0:
            raise ValueError(f"Argument `n` should be a positive integer. Received: n={n}")
        self.n = n
        self.input_spec = InputSpec(ndim=2)

    def call(self, inputs):
        column = ops.reshape(inputs, (0, 1, inputs.shape[1]))
        return ops.broadcast_to(column, (0, self.n, inputs.shape[1]))

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class Permute(Layer):
    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError("Invalid permutation argument `dims` for Permute Layer. The set of indices in `dims` "
                             f"must be consecutive and start from 1. Received dims={dims}")
        self.input_spec = InputSpec(ndim=len(self.dims) + 1)

    def call(self, inputs):
        return ops.transpose(inputs, axes=(0,) + self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


def _pairs(layer, value, name):
    """Keras's int / (sym_h, sym_w) / ((top, bottom), (left, right)) argument as two pairs."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{layer._describe()}: `{name}` cannot be negative. Received: {name}={value}.")
        return ((value, value), (value, value))
    if hasattr(value, "__len__") and len(value) == 2:
        pairs = []
        for which, entry in zip(("1st", "2nd"), value):
            pair = (entry, entry) if isinstance(entry, int) else tuple(entry)
            if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
                raise ValueError(f"{layer._describe()}: the {which} entry of {name} must be an int or a pair of "
                                 f"non-negative ints, got {entry!r}")
            pairs.append(pair)
        return tuple(pairs)
    raise ValueError(f"{layer._describe()}: `{name}` should be either an int, a tuple of 2 ints, or a tuple of 2 "
                     f"tuples of 2 ints. Received: {name}={value}.")


class ZeroPadding2D(Layer):
    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(self, data_format)
        self.padding = _pairs(self, padding, "padding")
        self.input_spec = InputSpec(ndim=4)

    @channels_last_call
    def call(self, inputs):
        return ops.pad(inputs, ((0, 0), *self.padding, (0, 0)))

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "data_format": self.data_format}


class Cropping2D(Layer):
    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(self, data_format)
        self.cropping = _pairs(self, cropping, "cropping")
        self.input_spec = InputSpec(ndim=4)

    @channels_last_call
    def call(self, inputs):
        sizes = []
        for axis, (before, after) in zip((1, 2), self.cropping):
            size = inputs.shape[axis]
            if size is None:
                raise UnsupportedError(f"{self._describe()}: cropping needs the spatial size of the input, got "
                                       f"{fmt_shape(inputs.shape)}")
            if before + after >= size:
                raise ValueError(f"{self._describe()}: Values in `cropping` argument should be smaller than the "
                                 f"corresponding spatial dimension of the input. Received: inputs.shape="
                                 f"{fmt_shape(inputs.shape)}, cropping={self.cropping}")
            sizes.append(size - before - after)
        return ops.slice(inputs, (0, self.cropping[0][0], self.cropping[1][0], 0), (-1, *sizes, -1))

    def get_config(self):
        return {**super().get_config(), "cropping": self.cropping, "data_format": self.data_format}


class UpSampling2D(Layer):
    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(self, data_format)
        self.size = standardize_tuple(self, size, "size")
        self.interpolation = interpolation.lower()
        if self.interpolation not in ("nearest", "bilinear"):
            raise UnsupportedError(f"{self._describe()}: interpolation={interpolation!r} is not supported "
                                   "(only 'nearest' and 'bilinear')")
        self.input_spec = InputSpec(ndim=4)

    @channels_last_call
    def call(self, inputs):
        if self.interpolation == "bilinear":
            return backend.apply_op("upsample_bilinear", [inputs], size=self.size)
        _, h, w, c = inputs.shape
        if None in (h, w, c):
            raise ShapeError(f"{self._describe()}: nearest upsampling needs the spatial size and channels of the "
                             f"input, got {fmt_shape(inputs.shape)}")
        (fh, fw) = self.size
        spread = ops.broadcast_to(ops.reshape(inputs, (0, h, 1, w, 1, c)), (0, h, fh, w, fw, c))
        return ops.reshape(spread, (0, h * fh, w * fw, c))

    def get_config(self):
        return {**super().get_config(), "size": self.size, "data_format": self.data_format,
                "interpolation": self.interpolation}
