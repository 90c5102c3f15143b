"""numpy references of the data-movement ops."""
import numpy as np

from ..ir.registry import reference


@reference("reshape")
def reshape(x, shape):
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(target)


reference("transpose")(lambda x, perm: np.ascontiguousarray(np.transpose(x, perm)))


@reference("broadcast_to")
def broadcast_to(x, shape):
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if d == 0 else d for i, d in enumerate(shape))  # 0: the operand's size
    return np.ascontiguousarray(np.broadcast_to(x, shape))


reference("concatenate")(lambda *xs, axis: np.concatenate(xs, axis=axis))


@reference("slice")
def slice_(x, begin, size):
    index = tuple(slice(s, None if n == -1 else s + n) for s, n in zip(begin, size))
    return np.ascontiguousarray(x[index])


@reference("pad")
def pad(x, pads, value=0.0):
    return np.pad(x, [tuple(p) for p in pads], constant_values=value)


@reference("fill")
def fill(shape, value, dtype="float32"):
    return np.full(shape, value, dtype=dtype)
