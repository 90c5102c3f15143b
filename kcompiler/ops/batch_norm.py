"""BatchNormalization in training mode as three ops, so that each is one or two passes over
memory instead of a chain of element-wise and reduction kernels.

x has any rank; ``attrs.axis`` is its channel axis (C channels, known at trace time) and the
statistics run over every other axis: M = (elements of x) / C values per channel. Per-channel
vectors are shaped like the channel axis of x with every other axis 1 ("stats shape", e.g.
(1, 1, 1, C) for NHWC), so they broadcast against x; gamma and beta may also be (C,) when the
channel axis is the last one.

``batch_norm_stats(x)`` -> (mean, var): the per-channel mean and biased variance (two passes:
the sum, then the sum of squared deviations from the mean; no cancellation).

``batch_norm_apply(x, mean, var, [gamma], [beta])`` is element-wise:

    y = (x - mean) * (rsqrt(var + epsilon) * gamma) + beta

(gamma / beta operands only when ``attrs.scale`` / ``attrs.center``), so it fuses with the
activation after it. Its VJP is that of the *composition* stats-then-apply: mean and var must
be the outputs of ``batch_norm_stats`` of the same x (checked), and the gradient that flows
through them reaches x inside ``batch_norm_grad``; they get no cotangent of their own.

``batch_norm_grad(dy, x, mean, var, [gamma])`` -> (dx, dgamma, dbeta, rstd) with
rstd = 1 / sqrt(var + epsilon), xhat = (x - mean) * rstd, per channel sums over the M values:

    dbeta = sum(dy);  dgamma = sum(dy * xhat)
    dx = gamma * rstd * (dy - dbeta / M - xhat * dgamma / M)

dgamma and dbeta have the shape of the channel axis alone, (C,); rstd (C,) is the kernel's
per-channel scratch (written once, read by the pass computing dx). Its gradient (second
order) is not supported.
"""
from ..errors import ShapeError, UnsupportedError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape, num_elements
from .common import broadcast_shapes, expect_float, normalize_axis


def channel_axis(op, x, attrs):
    """The channel axis of x (normalised), checked to be known."""
    axis = normalize_axis(op, attrs.get("axis", -1), x.rank)
    if x.shape[axis] is None:
        raise ShapeError(f"{op}: the channel axis {axis} of {fmt_shape(x.shape)} must be known")
    return axis


def stats_shape(x_shape, axis):
    return tuple(d if i == axis else 1 for i, d in enumerate(x_shape))


def layout(x_shape, axis):
    """x as (outer, C, inner): the extents before, at and after the channel axis."""
    return num_elements(x_shape[:axis]), x_shape[axis], num_elements(x_shape[axis + 1:])


def _check_vectors(op, x, axis, named):
    channels = x.shape[axis]
    allowed = {stats_shape(x.shape, axis)} | ({(channels,)} if axis == x.rank - 1 else set())
    for name, t in named:
        if tuple(t.shape) not in allowed or t.dtype != x.dtype:
            raise ShapeError(f"{op}: {name} must be a {x.dtype} vector of {channels} channels shaped "
                             f"{' or '.join(fmt_shape(s) for s in sorted(allowed))}, got {t.dtype} "
                             f"{fmt_shape(t.shape)}")


def param_names(attrs):
    return (["gamma"] if attrs.get("scale", True) else []) + (["beta"] if attrs.get("center", True) else [])


def _stats_rule(in_types, attrs):
    (x,) = in_types
    expect_float("batch_norm_stats", x)
    axis = channel_axis("batch_norm_stats", x, attrs)
    t = TensorType(stats_shape(x.shape, axis), x.dtype)
    return (t, t)


def _stats_vjp(b, nid, cotangents):
    """The stats' own gradient (used only when mean or var feed something other than
    batch_norm_apply): dx = dmean / M + dvar * 2 (x - mean) / M."""
    (x,) = b.operands(nid)
    dmean, dvar = cotangents
    count = num_elements(b.shape(x)) // num_elements(b.shape(dmean))
    mean = b.tuple_item(nid, 0)
    centred = b.op("sub", x, mean)
    # dmean and dvar are shaped to broadcast against x; the product with centred has x's shape
    return [b.op("add", b.op("mul", dmean, b.scalar(1.0 / count, b.dtype(x))),
                 b.op("mul", b.op("mul", dvar, b.scalar(2.0 / count, b.dtype(x))), centred))]


def _apply_rule(in_types, attrs):
    x, mean, var, *params = in_types
    expect_float("batch_norm_apply", x)
    axis = channel_axis("batch_norm_apply", x, attrs)
    names = param_names(attrs)
    if len(params) != len(names):
        raise ShapeError(f"batch_norm_apply: expects operands (x, mean, var{''.join(', ' + n for n in names)}) for "
                         f"attrs scale={attrs.get('scale', True)}, center={attrs.get('center', True)}, "
                         f"got {len(in_types)}")
    _check_vectors("batch_norm_apply", x, axis, [("mean", mean), ("var", var)] + list(zip(names, params)))
    broadcast_shapes("batch_norm_apply", *(t.shape for t in in_types))
    return TensorType(x.shape, x.dtype)


def _statistics_of(b, x, mean, var):
    """Whether (mean, var) are the two outputs of batch_norm_stats(x)."""
    nodes = b.g.nodes
    if nodes[mean]["op"] != "tuple_item" or nodes[var]["op"] != "tuple_item":
        return False
    (stats,), (stats_var,) = b.operands(mean), b.operands(var)
    return (stats == stats_var and nodes[stats]["op"] == "batch_norm_stats" and b.operands(stats) == [x]
            and nodes[mean]["attrs"]["index"] == 0 and nodes[var]["attrs"]["index"] == 1)


def _apply_vjp(b, nid, dy):
    attrs = b.attrs(nid)
    x, mean, var, *params = b.operands(nid)
    if not _statistics_of(b, x, mean, var):
        raise UnsupportedError("batch_norm_apply: the gradient is defined only when mean and var are the "
                               "batch_norm_stats of the same x (BatchNormalization in training mode)")
    scale = attrs.get("scale", True)
    grad = b.add("batch_norm_grad", [dy, x, mean, var] + params[:int(scale)],
                 {"axis": attrs.get("axis", -1), "epsilon": attrs.get("epsilon", 1e-3)})
    grads = [b.tuple_item(grad, 0), None, None]
    named = dict(zip(param_names(attrs), params))
    for name, index in (("gamma", 1), ("beta", 2)):
        if name in named:
            g = b.tuple_item(grad, index)
            shape = tuple(b.shape(named[name]))
            grads.append(g if tuple(b.shape(g)) == shape else b.op("reshape", g, shape=shape))
    return grads


def _grad_rule(in_types, attrs):
    dy, x, mean, var, *params = in_types
    expect_float("batch_norm_grad", x)
    axis = channel_axis("batch_norm_grad", x, attrs)
    if len(params) > 1:
        raise ShapeError(f"batch_norm_grad: expects operands (dy, x, mean, var, [gamma]), got {len(in_types)}")
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ShapeError(f"batch_norm_grad: dy {dy.dtype} {fmt_shape(dy.shape)} differs from x {x.dtype} "
                         f"{fmt_shape(x.shape)}")
    _check_vectors("batch_norm_grad", x, axis, [("mean", mean), ("var", var)] + [("gamma", p) for p in params])
    channels = TensorType((x.shape[axis],), x.dtype)
    return (TensorType(x.shape, x.dtype), channels, channels, channels)


def _grad_vjp(b, nid, cotangents):
    raise UnsupportedError("batch_norm_grad: second-order gradients of BatchNormalization (the gradient of "
                           "its gradient) are not supported")


register("batch_norm_stats", shape=_stats_rule, vjp=_stats_vjp, kind="reduction",
         doc="x -> (mean, biased variance) per channel (attrs.axis), shaped to broadcast against x")
register("batch_norm_apply", shape=_apply_rule, vjp=_apply_vjp, kind="elementwise",
         doc="(x, mean, var, [gamma], [beta]) -> (x - mean) * rsqrt(var + epsilon) * gamma + beta; attrs axis, "
             "epsilon, scale, center; mean and var from batch_norm_stats(x) for the gradient")
register("batch_norm_grad", shape=_grad_rule, vjp=_grad_vjp, kind="reduction",
         doc="(dy, x, mean, var, [gamma]) -> (dx, dgamma (C,), dbeta (C,), rstd (C,)); attrs axis, epsilon")
