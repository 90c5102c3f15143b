"""2-D convolution (NHWC data, HWIO kernel, as Keras) and its two gradients.

Attributes shared by the three ops: ``strides=(sh, sw)``, ``padding='valid'|'same'``
and ``dilation=(dh, dw)``. 'same' padding follows TensorFlow: the total padding of
an axis is max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0), and the odd
row or column goes after (bottom/right). The gradients are ops of their own, each
with the attribute the shape rule cannot recover from its operands:
``conv2d_backward_input(dy, kernel)`` takes ``input_hw=(h, w)`` (a stride > 1 makes
several input sizes give one output size) and ``conv2d_backward_kernel(x, dy)``
takes ``kernel_shape=(kh, kw, cin, cout)``.

The geometry helpers here (window_attrs, output_size, same_padding) are plain Python
so that the pooling ops, the references and the lowerings all share one definition.
"""
from dataclasses import dataclass

from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float, expect_rank

PADDINGS = ("valid", "same")


def _pair(op, name, value):
    # One canonical form (a pair) so references and lowerings never normalise attrs themselves.
    if not isinstance(value, (tuple, list)) or len(value) != 2 or \
            not all(isinstance(v, int) and v >= 1 for v in value):
        raise ShapeError(f"{op}: {name} must be a pair of positive integers, got {value!r}")
    return tuple(value)


def window_attrs(op, attrs, window_name=None):
    """(strides, padding, dilation[, window]) from an op's attrs, checked, with defaults."""
    strides = _pair(op, "strides", attrs.get("strides", (1, 1)))
    dilation = _pair(op, "dilation", attrs.get("dilation", (1, 1)))
    padding = attrs.get("padding", "valid")
    if padding not in PADDINGS:
        raise ShapeError(f"{op}: padding must be 'valid' or 'same', got {padding!r}")
    if window_name is None:
        return strides, padding, dilation
    return strides, padding, dilation, _pair(op, window_name, attrs[window_name])


def output_size(size, window, stride, dilation, padding):
    """Output length of one spatial axis (None if the input length is symbolic)."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return (size - (window - 1) * dilation - 1) // stride + 1


def same_padding(size, window, stride, dilation, padding):
    """(before, after) padding of one axis; 'same' puts the odd one after, as TensorFlow does."""
    if padding == "valid":
        return 0, 0
    out = output_size(size, window, stride, dilation, padding)
    total = max((out - 1) * stride + (window - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def spatial_output(op, x_shape, window, strides, dilation, padding, what):
    """(out_h, out_w) of a windowed op over NHWC ``x_shape``; raises if an axis comes out empty."""
    out = tuple(output_size(x_shape[1 + a], window[a], strides[a], dilation[a], padding) for a in (0, 1))
    if any(o is not None and o < 1 for o in out):
        raise ShapeError(f"{op}: input of shape {fmt_shape(x_shape)} is too small for {what} "
                         f"(strides={strides}, dilation={dilation}, padding={padding!r}): the output "
                         f"would have spatial size {out}")
    return out


def _channels_match(op, x, kernel):
    if x.shape[3] is not None and x.shape[3] != kernel.shape[2]:
        raise ShapeError(f"{op}: input of shape {fmt_shape(x.shape)} has {x.shape[3]} channels but the "
                         f"kernel of shape {fmt_shape(kernel.shape)} expects {kernel.shape[2]} "
                         "(kernel layout is (height, width, in_channels, out_channels))")


def _check_operands(op, *types):
    for t in types:
        expect_rank(op, t, 4)
        expect_float(op, t)
    if len({t.dtype for t in types}) > 1:
        raise ShapeError(f"{op}: operand dtypes differ ({', '.join(t.dtype for t in types)})")


def _conv2d_rule(in_types, attrs):
    x, kernel = in_types
    _check_operands("conv2d", x, kernel)
    strides, padding, dilation = window_attrs("conv2d", attrs)
    _channels_match("conv2d", x, kernel)
    oh, ow = spatial_output("conv2d", x.shape, kernel.shape[:2], strides, dilation, padding,
                            f"a kernel of shape {fmt_shape(kernel.shape)}")
    return TensorType((x.shape[0], oh, ow, kernel.shape[3]), x.dtype)


def _conv2d_vjp(b, nid, dy):
    x, kernel = b.operands(nid)
    attrs = dict(b.attrs(nid))
    dx = b.op("conv2d_backward_input", dy, kernel, input_hw=tuple(b.shape(x)[1:3]), **attrs)
    dk = b.op("conv2d_backward_kernel", x, dy, kernel_shape=tuple(b.shape(kernel)), **attrs)
    return [dx, dk]


def _expect_dy(op, dy, expected):
    if len(dy.shape) != 4 or any(a is not None and e is not None and a != e for a, e in zip(dy.shape, expected)):
        raise ShapeError(f"{op}: the output gradient has shape {fmt_shape(dy.shape)}, expected "
                         f"{fmt_shape(expected)}")


def _backward_input_rule(in_types, attrs):
    dy, kernel = in_types
    op = "conv2d_backward_input"
    _check_operands(op, dy, kernel)
    strides, padding, dilation = window_attrs(op, attrs)
    h, w = attrs["input_hw"]
    x_shape = (dy.shape[0], h, w, kernel.shape[2])
    out = spatial_output(op, x_shape, kernel.shape[:2], strides, dilation, padding,
                         f"a kernel of shape {fmt_shape(kernel.shape)}")
    _expect_dy(op, dy, (dy.shape[0],) + out + (kernel.shape[3],))
    return TensorType(x_shape, dy.dtype)


def _backward_input_vjp(b, nid, g):
    # conv2d_backward_input is the transpose of conv2d in x: <bwd(dy, K), g> = <dy, conv2d(g, K)>.
    dy, kernel = b.operands(nid)
    attrs = {k: v for k, v in b.attrs(nid).items() if k != "input_hw"}
    return [b.op("conv2d", g, kernel, **attrs),
            b.op("conv2d_backward_kernel", g, dy, kernel_shape=tuple(b.shape(kernel)), **attrs)]


def _backward_kernel_rule(in_types, attrs):
    x, dy = in_types
    op = "conv2d_backward_kernel"
    _check_operands(op, x, dy)
    strides, padding, dilation = window_attrs(op, attrs)
    kh, kw, cin, cout = attrs["kernel_shape"]
    if x.shape[3] is not None and x.shape[3] != cin:
        raise ShapeError(f"{op}: input of shape {fmt_shape(x.shape)} has {x.shape[3]} channels, "
                         f"kernel_shape {tuple(attrs['kernel_shape'])} expects {cin}")
    out = spatial_output(op, x.shape, (kh, kw), strides, dilation, padding, f"a {kh}x{kw} kernel")
    _expect_dy(op, dy, (x.shape[0],) + out + (cout,))
    return TensorType((kh, kw, cin, cout), x.dtype)


def _backward_kernel_vjp(b, nid, g):
    # <bwd_kernel(x, dy), G> = <conv2d(x, G), dy>: linear in x and in dy.
    x, dy = b.operands(nid)
    attrs = {k: v for k, v in b.attrs(nid).items() if k != "kernel_shape"}
    return [b.op("conv2d_backward_input", dy, g, input_hw=tuple(b.shape(x)[1:3]), **attrs),
            b.op("conv2d", x, g, **attrs)]


register("conv2d", shape=_conv2d_rule, vjp=_conv2d_vjp, kind="contraction",
         doc="cross-correlation of NHWC x with HWIO kernel; attrs strides, padding, dilation")
register("conv2d_backward_input", shape=_backward_input_rule, vjp=_backward_input_vjp, kind="contraction",
         doc="gradient of conv2d w.r.t. x from (dy, kernel); attrs as conv2d plus input_hw=(h, w)")
register("conv2d_backward_kernel", shape=_backward_kernel_rule, vjp=_backward_kernel_vjp, kind="contraction",
         doc="gradient of conv2d w.r.t. the kernel from (x, dy); attrs as conv2d plus kernel_shape")


# ---- the geometry the backends generate convolution kernels from -----------------------------

@dataclass(frozen=True)
class ConvGeometry:
    """Sizes, strides, dilation and leading padding of one convolution: what every backend's
    convolution kernels are generated from."""
    batch: int
    in_h: int
    in_w: int
    cin: int
    kh: int
    kw: int
    cout: int
    out_h: int
    out_w: int
    sh: int
    sw: int
    dh: int
    dw: int
    pad_top: int
    pad_left: int

    @property
    def width(self):
        """Row length of the column matrix: KH*KW*Cin."""
        return self.kh * self.kw * self.cin

    @property
    def rows(self):
        return self.batch * self.out_h * self.out_w

    @property
    def always_inside(self):
        """No tap of any window falls into the padding (every 'valid' convolution)."""
        return (self.pad_top == 0 and self.pad_left == 0
                and (self.out_h - 1) * self.sh + (self.kh - 1) * self.dh < self.in_h
                and (self.out_w - 1) * self.sw + (self.kw - 1) * self.dw < self.in_w)

    @property
    def pointwise(self):
        """x is its own column matrix (1x1 kernel, stride 1, no padding)."""
        return self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.pad_top == self.pad_left == 0


def conv_geometry(op, x_shape, kernel_shape, attrs):
    (sh, sw), padding, (dh, dw) = window_attrs(op, attrs)
    batch, in_h, in_w, cin = x_shape
    kh, kw, _, cout = kernel_shape
    return ConvGeometry(
        batch=batch, in_h=in_h, in_w=in_w, cin=cin, kh=kh, kw=kw, cout=cout,
        out_h=output_size(in_h, kh, sh, dh, padding), out_w=output_size(in_w, kw, sw, dw, padding),
        sh=sh, sw=sw, dh=dh, dw=dw,
        pad_top=same_padding(in_h, kh, sh, dh, padding)[0], pad_left=same_padding(in_w, kw, sw, dw, padding)[0])
