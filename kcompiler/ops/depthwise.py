"""Depthwise 2-D convolution (NHWC data, (kh, kw, C, M) kernel, as Keras's DepthwiseConv2D) and
its two gradients.

Input channel c meets only its own M kernel columns: output channel c * M + m is

    y[n, oh, ow, c * M + m] = sum over (i, j) of x[n, oh*sh + i*dh - pt, ow*sw + j*dw - pl, c] * k[i, j, c, m]

(taps in the padding count zero). Attributes as conv2d's (``strides``, ``padding``,
``dilation``; 'same' pads as TensorFlow, the odd row/column after), plus ``input_hw`` for the
input gradient and ``kernel_shape`` for the kernel gradient, which their operands cannot
recover. SeparableConv2D is this op followed by a 1x1 conv2d (a GEMM).

The three ops are linear in each operand, so their VJPs are each other, as for conv2d. Their
kernels are descriptions (schedule/depthwise.py), kind 'reduction': each output element is a
short sum, not a contraction over channels.
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float, expect_rank
from .conv import spatial_output, window_attrs


def _check(op, *types):
    for t in types:
        expect_rank(op, t, 4)
        expect_float(op, t)
    if len({t.dtype for t in types}) > 1:
        raise ShapeError(f"{op}: operand dtypes differ ({', '.join(t.dtype for t in types)})")


def _out_shape(op, x_shape, kernel_shape, attrs):
    strides, padding, dilation = window_attrs(op, attrs)
    kh, kw, channels, multiplier = kernel_shape
    if x_shape[3] is not None and x_shape[3] != channels:
        raise ShapeError(f"{op}: input of shape {fmt_shape(x_shape)} has {x_shape[3]} channels but the depthwise "
                         f"kernel of shape {fmt_shape(kernel_shape)} expects {channels} (kernel layout is "
                         "(height, width, channels, depth_multiplier))")
    oh, ow = spatial_output(op, x_shape, (kh, kw), strides, dilation, padding,
                            f"a kernel of shape {fmt_shape(kernel_shape)}")
    return (x_shape[0], oh, ow, channels * multiplier)


def _expect_dy(op, dy, expected):
    if any(a is not None and e is not None and a != e for a, e in zip(dy.shape, expected)):
        raise ShapeError(f"{op}: the output gradient has shape {fmt_shape(dy.shape)}, expected {fmt_shape(expected)}")


def _forward_rule(in_types, attrs):
    x, kernel = in_types
    _check("depthwise_conv2d", x, kernel)
    return TensorType(_out_shape("depthwise_conv2d", x.shape, kernel.shape, attrs), x.dtype)


def _backward_input_rule(in_types, attrs):
    op = "depthwise_conv2d_backward_input"
    dy, kernel = in_types
    _check(op, dy, kernel)
    h, w = attrs["input_hw"]
    x_shape = (dy.shape[0], h, w, kernel.shape[2])
    _expect_dy(op, dy, _out_shape(op, x_shape, kernel.shape, attrs))
    return TensorType(x_shape, dy.dtype)


def _backward_kernel_rule(in_types, attrs):
    op = "depthwise_conv2d_backward_kernel"
    x, dy = in_types
    _check(op, x, dy)
    kernel_shape = tuple(attrs["kernel_shape"])
    _expect_dy(op, dy, _out_shape(op, x.shape, kernel_shape, attrs))
    return TensorType(kernel_shape, x.dtype)


def _window(attrs):
    return {k: v for k, v in attrs.items() if k in ("strides", "padding", "dilation")}


def _forward_vjp(b, nid, dy):
    x, kernel = b.operands(nid)
    attrs = _window(b.attrs(nid))
    return [b.op("depthwise_conv2d_backward_input", dy, kernel, input_hw=tuple(b.shape(x)[1:3]), **attrs),
            b.op("depthwise_conv2d_backward_kernel", x, dy, kernel_shape=tuple(b.shape(kernel)), **attrs)]


def _backward_input_vjp(b, nid, g):
    # <bwd(dy, K), g> = <dy, dw(g, K)>: linear in dy and in K
    dy, kernel = b.operands(nid)
    attrs = _window(b.attrs(nid))
    return [b.op("depthwise_conv2d", g, kernel, **attrs),
            b.op("depthwise_conv2d_backward_kernel", g, dy, kernel_shape=tuple(b.shape(kernel)), **attrs)]


def _backward_kernel_vjp(b, nid, g):
    # <bwd_kernel(x, dy), G> = <dw(x, G), dy>
    x, dy = b.operands(nid)
    attrs = _window(b.attrs(nid))
    return [b.op("depthwise_conv2d_backward_input", dy, g, input_hw=tuple(b.shape(x)[1:3]), **attrs),
            b.op("depthwise_conv2d", x, g, **attrs)]


register("depthwise_conv2d", shape=_forward_rule, vjp=_forward_vjp, kind="reduction",
         doc="depthwise cross-correlation of NHWC x with a (kh, kw, C, M) kernel -> C*M channels; attrs strides, "
             "padding, dilation")
register("depthwise_conv2d_backward_input", shape=_backward_input_rule, vjp=_backward_input_vjp, kind="reduction",
         doc="gradient of depthwise_conv2d w.r.t. x from (dy, kernel); attrs plus input_hw=(h, w)")
register("depthwise_conv2d_backward_kernel", shape=_backward_kernel_rule, vjp=_backward_kernel_vjp,
         kind="reduction", doc="gradient of depthwise_conv2d w.r.t. the kernel from (x, dy); attrs plus kernel_shape")
