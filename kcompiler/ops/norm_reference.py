"""numpy references of layer_norm and layer_norm_grad (float64 inside, the input's dtype out)."""
import numpy as np

from ..ir.registry import reference
from .norm import rows_of


def _grouped(x, groups, positions):
    """x (N..., S..., C) as (N, S, G, C/G) in float64: the row of (n, g) is [n, :, g, :]."""
    n, s, c = rows_of(x.shape, {"positions": positions})
    return x.astype(np.float64).reshape(n, s, groups, c // groups)


def _statistics(xg, epsilon):
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return mean, 1.0 / np.sqrt(var + epsilon)


def _split(arrays, scale, center):
    arrays = list(arrays)
    gamma = arrays.pop(0) if scale else None
    beta = arrays.pop(0) if center else None
    return gamma, beta


@reference("layer_norm")
def layer_norm(x, *params, groups=1, positions=0, epsilon=1e-3, scale=True, center=True):
    gamma, beta = _split(params, scale, center)
    xg = _grouped(x, groups, positions)
    mean, rstd = _statistics(xg, epsilon)
    y = ((xg - mean) * rstd).reshape(x.shape)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y.astype(x.dtype)


@reference("layer_norm_grad")
def layer_norm_grad(x, *operands, groups=1, positions=0, epsilon=1e-3, scale=True, center=True):
    *params, dy = operands
    gamma, _ = _split(params, scale, False)
    xg = _grouped(x, groups, positions)
    mean, rstd = _statistics(xg, epsilon)
    xhat = (xg - mean) * rstd
    dyg = _grouped(dy, groups, positions)
    g = dyg * (1.0 if gamma is None else _grouped(np.broadcast_to(gamma, x.shape), groups, positions))
    dx = rstd * (g - g.mean(axis=(1, 3), keepdims=True) - xhat * (g * xhat).mean(axis=(1, 3), keepdims=True))
    channels = x.shape[-1]
    dgamma = (dyg * xhat).sum(axis=(0, 1)).reshape(channels) if scale else np.zeros(channels)
    dbeta = dyg.sum(axis=(0, 1)).reshape(channels) if center else np.zeros(channels)
    stats_shape = x.shape[:x.ndim - 1 - positions] + (groups,)
    stats = (mean.reshape(stats_shape), rstd.reshape(stats_shape))
    return tuple(a.astype(x.dtype) for a in (dx.reshape(x.shape), dgamma, dbeta) + stats)
