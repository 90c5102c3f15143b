"""numpy references of the nn ops, and of the Philox4x32-10 generator behind dropout."""
import numpy as np

from ..errors import IndexRangeError
from ..ir.registry import reference

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_W0, PHILOX_W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)


def philox_uniform(seed, step, n, key1=0):
    """Uniform floats in [0, 1) for element indices 0..n-1: Philox4x32-10 with
    counter (index, step, 0, 0) and key (seed, key1); output word 0, top 24 bits."""
    c0 = np.arange(n, dtype=np.uint64).astype(np.uint32)
    c1 = np.full(n, step & 0xFFFFFFFF, dtype=np.uint32)
    c2 = np.zeros(n, dtype=np.uint32)
    c3 = np.zeros(n, dtype=np.uint32)
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(key1)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = PHILOX_M0 * c0.astype(np.uint64)
            p1 = PHILOX_M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), p0.astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), p1.astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0, k1 = k0 + PHILOX_W0, k1 + PHILOX_W1
    return (c0 >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


@reference("softmax")
def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


@reference("softmax_grad")
def softmax_grad(y, dy, axis=-1):
    return (y * (dy - np.sum(dy * y, axis=axis, keepdims=True))).astype(y.dtype)


@reference("log_softmax")
def log_softmax(x, axis=-1):
    s = x - np.max(x, axis=axis, keepdims=True)
    return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)


@reference("log_softmax_grad")
def log_softmax_grad(y, dy, axis=-1):
    return (dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)).astype(y.dtype)


def _first_outside(idx, limit):
    """The first index outside [0, limit) in memory order (the one a kernel reports), or None."""
    bad = (idx < 0) | (idx >= limit)
    return int(idx[bad].flat[0]) if bad.any() else None


@reference("gather")
def gather(table, idx):
    value = _first_outside(idx, table.shape[0])
    if value is not None:
        raise IndexRangeError(f"gather: index {value} is outside the table's {table.shape[0]} rows", value)
    return table[idx]


@reference("check_index")
def check_index(x, limit, what):
    value = _first_outside(x, limit)
    if value is not None:
        raise IndexRangeError(f"{what}: index {value} is outside [0, {limit})", value)
    return x


@reference("scatter_add")
def scatter_add(idx, upd, rows):
    out = np.zeros((rows, upd.shape[-1]), dtype=upd.dtype)
    np.add.at(out, idx.reshape(-1), upd.reshape(-1, upd.shape[-1]))
    return out


@reference("dropout")
def dropout(x, step, rate, seed):
    keep = philox_uniform(seed, int(step), x.size).reshape(x.shape) >= rate
    return np.where(keep, x / np.float32(1 - rate), 0).astype(x.dtype)


def philox_normal(seed, step, n):
    """Standard normals for element indices 0..n-1 (float32): Box-Muller over the uniforms of
    keys (seed, 1) and (seed, 2), sqrt(-2 log(1 - u1)) * cos(2 pi u2) (dropout's key is
    (seed, 0): no stream is shared with it or with another seed)."""
    u1, u2 = philox_uniform(seed, step, n, key1=1), philox_uniform(seed, step, n, key1=2)
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - u1))
    return (radius * np.cos(np.float32(2 * np.pi) * u2)).astype(np.float32)


@reference("gaussian_noise")
def gaussian_noise(x, step, stddev, seed):
    z = philox_normal(seed, int(step), x.size).reshape(x.shape)
    return (x + np.float32(stddev) * z).astype(x.dtype)


@reference("gaussian_dropout")
def gaussian_dropout(x, step, stddev, seed):
    z = philox_normal(seed, int(step), x.size).reshape(x.shape)
    return (x * (np.float32(1.0) + np.float32(stddev) * z)).astype(x.dtype)
