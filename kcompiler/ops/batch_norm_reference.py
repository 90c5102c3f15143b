"""numpy references of batch_norm_stats, batch_norm_apply and batch_norm_grad (float64
inside, the input's dtype out)."""
import numpy as np

from ..ir.registry import reference


def _axes(x, axis):
    """The reduced axes (all but the channel axis) and the channel axis, normalised."""
    axis %= x.ndim
    return tuple(i for i in range(x.ndim) if i != axis), axis


@reference("batch_norm_stats")
def batch_norm_stats(x, axis=-1):
    reduced, _ = _axes(x, axis)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=reduced, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=reduced, keepdims=True)
    return mean.astype(x.dtype), var.astype(x.dtype)


@reference("batch_norm_apply")
def batch_norm_apply(x, mean, var, *params, axis=-1, epsilon=1e-3, scale=True, center=True):
    params = list(params)
    inv = 1.0 / np.sqrt(var.astype(np.float64) + epsilon)
    if scale:
        inv = inv * params.pop(0)
    y = (x.astype(np.float64) - mean) * inv
    if center:
        y = y + params.pop(0)
    return y.astype(x.dtype)


@reference("batch_norm_grad")
def batch_norm_grad(dy, x, mean, var, *gamma, axis=-1, epsilon=1e-3):
    reduced, axis = _axes(x, axis)
    channels = x.shape[axis]
    shape = tuple(channels if i == axis else 1 for i in range(x.ndim))
    count = x.size // channels
    rstd = 1.0 / np.sqrt(var.astype(np.float64).reshape(shape) + epsilon)
    xhat = (x.astype(np.float64) - mean.reshape(shape)) * rstd
    dy64 = dy.astype(np.float64)
    dbeta = dy64.sum(axis=reduced, keepdims=True)
    dgamma = (dy64 * xhat).sum(axis=reduced, keepdims=True)
    g = gamma[0].reshape(shape).astype(np.float64) if gamma else 1.0
    dx = g * rstd * (dy64 - dbeta / count - xhat * dgamma / count)
    return tuple(a.astype(x.dtype) for a in (dx, dgamma.reshape(channels), dbeta.reshape(channels),
                                              rstd.reshape(channels)))
