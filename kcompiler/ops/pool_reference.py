"""numpy references of max and average pooling and their gradients: loops over the
window offsets (i, j), each reading one strided slice of the padded input."""
import numpy as np

from ..ir.registry import reference
from .conv_reference import crop_hw, geometry, pad_hw, tap

NO_DILATION = (1, 1)


def _padded_zeros(in_hw, pads, n, c):
    return np.zeros((n, in_hw[0] + sum(pads[0]), in_hw[1] + sum(pads[1]), c))


def _offsets(pool):
    """Window offsets in row-major order: the order in which ties are broken."""
    return [(i, j) for i in range(pool[0]) for j in range(pool[1])]


@reference("max_pool2d")
def max_pool2d(x, pool, strides=(1, 1), padding="valid"):
    pads, out_hw = geometry(x.shape[1:3], pool, strides, padding, NO_DILATION)
    xp = pad_hw(x, pads, value=-np.inf)
    windows = [xp[(slice(None),) + tap(i, j, out_hw, strides, NO_DILATION)] for i, j in _offsets(pool)]
    return np.max(windows, axis=0).astype(x.dtype)


@reference("max_pool2d_grad")
def max_pool2d_grad(x, dy, pool, strides=(1, 1), padding="valid"):
    pads, out_hw = geometry(x.shape[1:3], pool, strides, padding, NO_DILATION)
    xp = pad_hw(x, pads, value=-np.inf)
    y = max_pool2d(x, pool, strides, padding)
    dxp = _padded_zeros(x.shape[1:3], pads, x.shape[0], x.shape[3])
    routed = np.zeros(y.shape, dtype=bool)  # windows whose maximum has already taken dy
    for i, j in _offsets(pool):
        rows, cols = tap(i, j, out_hw, strides, NO_DILATION)
        window = xp[:, rows, cols, :]
        first = ((window == y) | np.isnan(window)) & ~routed  # a NaN maximum is its first NaN tap
        routed |= first
        dxp[:, rows, cols, :] += np.where(first, dy, 0.0)
    return crop_hw(dxp, pads, x.shape[1:3]).astype(x.dtype)


@reference("max_pool2d_argmax")
def max_pool2d_argmax(x, pool, strides=(1, 1), padding="valid"):
    """(y, idx): idx is the window position of the tap max_pool2d_grad routes to, found as it
    finds it; -1 where that tap is padding."""
    pads, out_hw = geometry(x.shape[1:3], pool, strides, padding, NO_DILATION)
    xp = pad_hw(x, pads, value=-np.inf)
    inside = pad_hw(np.ones((1,) + x.shape[1:3] + (1,), dtype=bool), pads, value=False)
    y = max_pool2d(x, pool, strides, padding)
    idx = np.full(y.shape, -1, dtype=np.int32)
    routed = np.zeros(y.shape, dtype=bool)
    for k, (i, j) in enumerate(_offsets(pool)):
        rows, cols = tap(i, j, out_hw, strides, NO_DILATION)
        window = xp[:, rows, cols, :]
        first = ((window == y) | np.isnan(window)) & ~routed
        routed |= first
        idx = np.where(first & inside[:, rows, cols, :], k, idx).astype(np.int32)
    return y, idx


@reference("max_pool2d_grad_argmax")
def max_pool2d_grad_argmax(idx, dy, input_hw, pool, strides=(1, 1), padding="valid"):
    pads, out_hw = geometry(input_hw, pool, strides, padding, NO_DILATION)
    dxp = _padded_zeros(input_hw, pads, dy.shape[0], dy.shape[3])
    for k, (i, j) in enumerate(_offsets(pool)):
        rows, cols = tap(i, j, out_hw, strides, NO_DILATION)
        dxp[:, rows, cols, :] += np.where(idx == k, dy, 0.0)
    return crop_hw(dxp, pads, input_hw).astype(dy.dtype)


def _window_counts(in_hw, pool, strides, padding):
    """(out_h, out_w, 1): how many input elements (not padding) each window covers."""
    pads, out_hw = geometry(in_hw, pool, strides, padding, NO_DILATION)
    ones = pad_hw(np.ones((1,) + tuple(in_hw) + (1,)), pads)
    return sum(ones[(0,) + tap(i, j, out_hw, strides, NO_DILATION)] for i, j in _offsets(pool))


@reference("avg_pool2d")
def avg_pool2d(x, pool, strides=(1, 1), padding="valid"):
    pads, out_hw = geometry(x.shape[1:3], pool, strides, padding, NO_DILATION)
    xp = pad_hw(x.astype(np.float64), pads)
    total = sum(xp[(slice(None),) + tap(i, j, out_hw, strides, NO_DILATION)] for i, j in _offsets(pool))
    return (total / _window_counts(x.shape[1:3], pool, strides, padding)).astype(x.dtype)


@reference("avg_pool2d_grad")
def avg_pool2d_grad(dy, input_hw, pool, strides=(1, 1), padding="valid"):
    pads, out_hw = geometry(input_hw, pool, strides, padding, NO_DILATION)
    share = dy.astype(np.float64) / _window_counts(input_hw, pool, strides, padding)
    dxp = _padded_zeros(input_hw, pads, dy.shape[0], dy.shape[3])
    for i, j in _offsets(pool):
        rows, cols = tap(i, j, out_hw, strides, NO_DILATION)
        dxp[:, rows, cols, :] += share
    return crop_hw(dxp, pads, input_hw).astype(dy.dtype)
