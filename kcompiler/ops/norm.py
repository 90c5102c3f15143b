"""Layer and group normalization as one op forward and one op backward.

``layer_norm(x, [gamma], [beta])`` normalises x per sample and channel group. x has rank >= 2;
its last axis holds the C channels, the ``attrs.positions`` axes before it the positions S of
one sample, and every axis before those the samples N: x is (N..., S..., C). The channels form
``attrs.groups`` groups of C/G consecutive channels, and the S * C/G elements of (n, g) are
one row with one mean and one biased variance:

    y[n, s, c] = (x[n, s, c] - mean[n, g]) / sqrt(var[n, g] + epsilon) * gamma[c] + beta[c]

Keras's LayerNormalization over the last axis is groups=1, positions=0 (every other axis is a
sample); GroupNormalization of (batch, H, W, C) is positions=2 with its groups. gamma and
beta, (C,), are operands only when ``attrs.scale`` / ``attrs.center`` say so.

``layer_norm_grad(x, [gamma], dy)`` gives (dx, dgamma, dbeta, mean, rstd): the gradients of x,
gamma and beta (dgamma and dbeta are zeros when the forward has no gamma / beta), then each
row's mean and 1/sqrt(var + epsilon), shape (N..., G), which the kernel recomputes from x and
reads back for the parameter gradients (the forward stores no statistics, so inference
writes nothing but y). With xhat = (x - mean) * rstd, g = dy * gamma and m = S * C/G:

    dx = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat))
    dgamma[c] = sum over n, s of dy * xhat;  dbeta[c] = sum over n, s of dy
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float

def norm_attrs(op, attrs, x_shape):
    """(groups, positions, epsilon, scale, center), checked against x's shape."""
    groups, positions = attrs.get("groups", 1), attrs.get("positions", 0)
    if not isinstance(groups, int) or groups < 1:
        raise ShapeError(f"{op}: groups must be a positive integer, got {groups!r}")
    if not isinstance(positions, int) or not 0 <= positions <= len(x_shape) - 2:
        raise ShapeError(f"{op}: positions must be an axis count in [0, {len(x_shape) - 2}] for x of shape "
                         f"{fmt_shape(x_shape)}, got {positions!r}")
    if x_shape[-1] is not None and x_shape[-1] % groups:
        raise ShapeError(f"{op}: {x_shape[-1]} channels do not split into {groups} groups")
    return (groups, positions, float(attrs.get("epsilon", 1e-3)), bool(attrs.get("scale", True)),
            bool(attrs.get("center", True)))


def rows_of(x_shape, attrs):
    """(N, S, C): samples, positions per sample, channels of x (static sizes)."""
    positions = attrs.get("positions", 0)
    samples, per_sample = 1, 1
    for d in x_shape[:len(x_shape) - 1 - positions]:
        samples *= d
    for d in x_shape[len(x_shape) - 1 - positions:-1]:
        per_sample *= d
    return samples, per_sample, x_shape[-1]


def operand_names(attrs):
    """The forward's operands in order: x, then gamma and beta when the attrs say so."""
    return ["x"] + (["gamma"] if attrs.get("scale", True) else []) + (["beta"] if attrs.get("center", True) else [])


def _check(op, x, params, attrs, names):
    if x.rank < 2:
        raise ShapeError(f"{op}: expects an operand of rank >= 2, got shape {fmt_shape(x.shape)}")
    expect_float(op, x)
    if x.shape[-1] is None:
        raise ShapeError(f"{op}: the channel axis of {fmt_shape(x.shape)} must be known")
    norm_attrs(op, attrs, x.shape)
    if len(params) != len(names):
        raise ShapeError(f"{op}: expects operands ({', '.join(['x'] + names)}) for attrs scale="
                         f"{attrs.get('scale', True)}, center={attrs.get('center', True)}, got {len(params) + 1}")
    for name, t in zip(names, params):
        if t.shape != (x.shape[-1],) or t.dtype != x.dtype:
            raise ShapeError(f"{op}: {name} must be a {x.dtype} vector of {x.shape[-1]} channels, got "
                             f"{t.dtype} {fmt_shape(t.shape)}")


def _layer_norm_rule(in_types, attrs):
    x, *params = in_types
    _check("layer_norm", x, params, attrs, operand_names(attrs)[1:])
    return TensorType(x.shape, x.dtype)


def _layer_norm_grad_rule(in_types, attrs):
    x, *params, dy = in_types
    _check("layer_norm_grad", x, params, attrs, ["gamma"] if attrs.get("scale", True) else [])
    if dy.shape != x.shape and None not in dy.shape + x.shape:
        raise ShapeError(f"layer_norm_grad: dy {fmt_shape(dy.shape)} differs from x {fmt_shape(x.shape)}")
    groups = attrs.get("groups", 1)
    channels = TensorType((x.shape[-1],), x.dtype)
    stats = TensorType(x.shape[:x.rank - 1 - attrs.get("positions", 0)] + (groups,), x.dtype)
    return (TensorType(x.shape, x.dtype), channels, channels, stats, stats)


def _layer_norm_vjp(b, nid, dy):
    attrs = b.attrs(nid)
    operands = b.operands(nid)
    x = operands[0]
    gamma = [operands[1]] if attrs.get("scale", True) else []
    grad = b.add("layer_norm_grad", [x, *gamma, dy], attrs)
    return [b.tuple_item(grad, 0)] + [b.tuple_item(grad, 1)] * len(gamma) + \
        ([b.tuple_item(grad, 2)] if attrs.get("center", True) else [])


register("layer_norm", shape=_layer_norm_rule, vjp=_layer_norm_vjp, kind="reduction",
         doc="(x (N..., S..., C), [gamma], [beta]) -> normalised per (sample, channel group); attrs groups, "
             "positions, epsilon, scale, center")
register("layer_norm_grad", shape=_layer_norm_grad_rule, kind="reduction",
         doc="(x, [gamma], dy) -> (dx, dgamma, dbeta, mean (N..., G), rstd (N..., G))")
