"""2-D max and average pooling over NHWC data, and their gradients.

Attributes: ``pool=(ph, pw)``, ``strides=(sh, sw)``, ``padding='valid'|'same'``;
'same' padding is placed as for conv2d (odd row/column after). Max pooling pads
with -inf, so padding is never the maximum; its gradient goes to the first maximum
of each window in row-major order, as TensorFlow's MaxPoolGrad does, and windows
that overlap add up. Average pooling divides each window by the number of input
elements it covers (padding excluded), as Keras does. GlobalAveragePooling2D is
``mean`` over axes (1, 2): no op here.

``max_pool2d_argmax(x)`` -> (y, idx) and ``max_pool2d_grad_argmax(idx, dy)`` split max pooling
and its gradient at the routing decision: y is max_pool2d's, idx (int32, y's shape) the flat
position ``kh * pool_w + kw`` in its window (padding positions counted) of the tap
max_pool2d_grad sends the window's dy to, or -1 where it sends it into the padding (a -inf
maximum with padding before the first valid tap); the gradient adds each window's dy at its
idx. They are not traced from a model: passes/pool_argmax.py makes them from a training graph,
so that the gradient reads idx instead of the pooled layer's input.
"""
from ..errors import ShapeError, UnsupportedError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float, expect_rank
from .conv import spatial_output, window_attrs


def pool_attrs(op, attrs):
    """(pool, strides, padding) from a pooling op's attrs, checked."""
    if "dilation" in attrs:
        raise ShapeError(f"{op}: pooling takes no dilation attribute")
    strides, padding, _, pool = window_attrs(op, attrs, "pool")
    return pool, strides, padding


def windows_tile(op, attrs, height, width):
    """Why the windows of a pooling op over a ``height`` x ``width`` input do not tile it (each
    element in at most one window, none reaching into padding), or None when they do."""
    pool, strides, padding = pool_attrs(op, attrs)
    if tuple(strides) != tuple(pool):
        return "its stride differs from its window (windows overlap or skip elements)"
    if padding != "valid" and (height % pool[0] or width % pool[1]):
        return "its windows reach into the padding"
    return None


def windows_overlap(op, attrs):
    """Whether a pooling op's windows overlap (a stride below the window on some axis): its
    gradient then adds several windows' shares into one element."""
    pool, strides, _ = pool_attrs(op, attrs)
    return strides[0] < pool[0] or strides[1] < pool[1]


def _pooled_shape(op, x_shape, attrs):
    pool, strides, padding = pool_attrs(op, attrs)
    oh, ow = spatial_output(op, x_shape, pool, strides, (1, 1), padding, f"a {pool[0]}x{pool[1]} pool")
    return (x_shape[0], oh, ow, x_shape[3])


def _pool_rule(op):
    def rule(in_types, attrs):
        (x,) = in_types
        expect_rank(op, x, 4)
        expect_float(op, x)
        return TensorType(_pooled_shape(op, x.shape, attrs), x.dtype)
    return rule


def grad_input_shape(dy_shape, attrs):
    """The pooled layer's input shape (N, h, w, C) that a gradient op with attr input_hw=(h, w)
    (avg_pool2d_grad, max_pool2d_grad_argmax) computes from dy's shape."""
    h, w = attrs["input_hw"]
    return (dy_shape[0], h, w, dy_shape[3])


def _expect_dy(op, dy, expected):
    if any(a is not None and e is not None and a != e for a, e in zip(dy.shape, expected)):
        raise ShapeError(f"{op}: the output gradient has shape {fmt_shape(dy.shape)}, expected "
                         f"{fmt_shape(expected)}")


def _max_pool_grad_rule(in_types, attrs):
    x, dy = in_types
    op = "max_pool2d_grad"
    expect_rank(op, x, 4)
    expect_rank(op, dy, 4)
    expect_float(op, x)
    _expect_dy(op, dy, _pooled_shape(op, x.shape, attrs))
    return TensorType(x.shape, x.dtype)


def _max_pool_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [b.op("max_pool2d_grad", x, dy, **b.attrs(nid))]


def _argmax_rule(in_types, attrs):
    y = _pool_rule("max_pool2d_argmax")(in_types, attrs)
    return (y, TensorType(y.shape, "int32"))


def _argmax_vjp(b, nid, cotangents):
    raise UnsupportedError("max_pool2d_argmax: no gradient rule; it is made after autodiff (passes/pool_argmax.py), "
                           "differentiate max_pool2d instead")


def _grad_argmax_rule(in_types, attrs):
    idx, dy = in_types
    op = "max_pool2d_grad_argmax"
    expect_rank(op, idx, 4)
    expect_rank(op, dy, 4)
    expect_float(op, dy)
    if idx.dtype != "int32":
        raise ShapeError(f"{op}: idx must be int32 (from max_pool2d_argmax), got {idx.dtype}")
    x_shape = grad_input_shape(dy.shape, attrs)
    _expect_dy(op, dy, _pooled_shape(op, x_shape, attrs))
    if any(a is not None and e is not None and a != e for a, e in zip(idx.shape, dy.shape)):
        raise ShapeError(f"{op}: idx has shape {fmt_shape(idx.shape)}, dy {fmt_shape(dy.shape)}: they must be equal")
    return TensorType(x_shape, dy.dtype)


def _avg_pool_grad_rule(in_types, attrs):
    (dy,) = in_types
    op = "avg_pool2d_grad"
    expect_rank(op, dy, 4)
    expect_float(op, dy)
    x_shape = grad_input_shape(dy.shape, attrs)
    _expect_dy(op, dy, _pooled_shape(op, x_shape, attrs))
    return TensorType(x_shape, dy.dtype)


def _avg_pool_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [b.op("avg_pool2d_grad", dy, input_hw=tuple(b.shape(x)[1:3]), **b.attrs(nid))]


def _avg_pool_grad_vjp(b, nid, g):
    # avg_pool2d_grad is the transpose of avg_pool2d (same windows, same divisors).
    attrs = {k: v for k, v in b.attrs(nid).items() if k != "input_hw"}
    return [b.op("avg_pool2d", g, **attrs)]


register("max_pool2d", shape=_pool_rule("max_pool2d"), vjp=_max_pool_vjp, kind="reduction",
         doc="maximum over each window of NHWC x; attrs pool, strides, padding ('same' pads with -inf)")
register("max_pool2d_grad", shape=_max_pool_grad_rule, kind="reduction",
         doc="gradient of max_pool2d from (x, dy): each window's dy goes to its first maximum")
register("avg_pool2d", shape=_pool_rule("avg_pool2d"), vjp=_avg_pool_vjp, kind="reduction",
         doc="mean over each window of NHWC x, counting only the input elements it covers")
register("avg_pool2d_grad", shape=_avg_pool_grad_rule, vjp=_avg_pool_grad_vjp, kind="reduction",
         doc="gradient of avg_pool2d from dy; attrs as avg_pool2d plus input_hw=(h, w)")
register("max_pool2d_argmax", shape=_argmax_rule, vjp=_argmax_vjp, kind="reduction",
         doc="max_pool2d of x and, per window, the int32 position kh * pool_w + kw of the tap its gradient goes "
             "to (-1: into the padding); made by passes/pool_argmax.py")
register("max_pool2d_grad_argmax", shape=_grad_argmax_rule, kind="reduction",
         doc="gradient of max_pool2d from (idx, dy), idx from max_pool2d_argmax: each window's dy goes to its tap "
             "idx; attrs as max_pool2d plus input_hw=(h, w)")
