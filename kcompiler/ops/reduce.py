"""Reductions over axes: sum, mean, max, min, argmax, argmin."""
from ..ir.registry import register
from ..ir.types import TensorType
from .common import normalize_axes


def reduced_shape(op, shape, axes, keepdims):
    axes = normalize_axes(op, axes, len(shape))
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_rule(name, dtype=None):
    def rule(in_types, attrs):
        t = in_types[0]
        return TensorType(reduced_shape(name, t.shape, attrs.get("axes"), attrs.get("keepdims", False)),
                          dtype or t.dtype)
    return rule


def broadcast_back(b, dy, x, attrs):
    """Reshape a reduced cotangent to keepdims form and broadcast it to x's shape."""
    keep = reduced_shape("reduce", b.shape(x), attrs.get("axes"), True)
    if tuple(b.shape(dy)) != keep:
        dy = b.op("reshape", dy, shape=keep)
    return b.op("broadcast_to", dy, shape=tuple(b.shape(x)))


def _sum_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [broadcast_back(b, dy, x, b.attrs(nid))]


def _mean_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    xs, ys = b.shape(x), b.shape(nid)
    count = 1
    for d in xs:
        count *= d
    for d in ys:
        count //= d
    g = broadcast_back(b, dy, x, b.attrs(nid))
    return [b.op("mul", g, b.scalar(1.0 / count, b.dtype(x)))]


def _extremum_vjp(b, nid, dy):
    # The gradient is split evenly between tied extrema, as TensorFlow does.
    (x,) = b.operands(nid)
    attrs = b.attrs(nid)
    hit = b.op("cast", b.op("equal", x, broadcast_back(b, nid, x, attrs)), dtype=b.dtype(x))
    count = b.op("sum", hit, axes=attrs.get("axes"), keepdims=True)
    share = b.op("div", hit, count)
    return [b.op("mul", share, broadcast_back(b, dy, x, attrs))]


register("sum", shape=_reduce_rule("sum"), vjp=_sum_vjp, kind="reduction")
register("mean", shape=_reduce_rule("mean"), vjp=_mean_vjp, kind="reduction")
register("max", shape=_reduce_rule("max"), vjp=_extremum_vjp, kind="reduction")
register("min", shape=_reduce_rule("min"), vjp=_extremum_vjp, kind="reduction")


def _arg_rule(name):
    def rule(in_types, attrs):
        t = in_types[0]
        return TensorType(reduced_shape(name, t.shape, attrs["axis"], attrs.get("keepdims", False)), "int32")
    return rule


register("argmax", shape=_arg_rule("argmax"), vjp=lambda b, n, dy: [None], kind="reduction",
         doc="index of the first maximum along attrs.axis")
register("argmin", shape=_arg_rule("argmin"), vjp=lambda b, n, dy: [None], kind="reduction")
