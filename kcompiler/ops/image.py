"""Bilinear upsampling of NHWC images by integer factors, and its gradient.

``upsample_bilinear(x)`` with ``attrs.size = (fh, fw)`` gives (N, H*fh, W*fw, C) as
TensorFlow's ``resize(method='bilinear')`` (what Keras's UpSampling2D(interpolation=
'bilinear') calls): half-pixel centres, output row o reads input rows lower/upper around
``src = (o + 0.5) * (1/fh) - 0.5`` (float32) clamped to the image, weighted by
``lerp = src - floor(src)``; the two columns likewise; then
``top + (bottom - top) * y_lerp`` of ``left + (right - left) * x_lerp`` per row.

``upsample_bilinear_grad(dy)`` (attrs size and ``input_hw``) is its transpose: each input
pixel gathers the output pixels whose taps reach it, with the same weights.
Nearest-neighbour upsampling needs no op: it is reshape + broadcast_to + reshape.
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float, expect_rank


def factors(op, attrs):
    size = attrs.get("size")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(isinstance(f, int) and f >= 1 for f in size):
        raise ShapeError(f"{op}: size must be a pair of positive integers, got {size!r}")
    return tuple(size)


def source_scale(factor):
    """TensorFlow's scale in/out of one axis (the kernel rounds it to float32 as TensorFlow
    holds it)."""
    return 1.0 / factor


def _upsample_rule(in_types, attrs):
    (x,) = in_types
    expect_rank("upsample_bilinear", x, 4)
    expect_float("upsample_bilinear", x)
    fh, fw = factors("upsample_bilinear", attrs)
    n, h, w, c = x.shape
    return TensorType((n, None if h is None else h * fh, None if w is None else w * fw, c), x.dtype)


def _upsample_grad_rule(in_types, attrs):
    (dy,) = in_types
    op = "upsample_bilinear_grad"
    expect_rank(op, dy, 4)
    expect_float(op, dy)
    fh, fw = factors(op, attrs)
    h, w = attrs["input_hw"]
    if dy.shape[1:3] != (h * fh, w * fw):
        raise ShapeError(f"{op}: dy of shape {fmt_shape(dy.shape)} is not an input of {h}x{w} upsampled by "
                         f"({fh}, {fw})")
    return TensorType((dy.shape[0], h, w, dy.shape[3]), dy.dtype)


def _upsample_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [b.op("upsample_bilinear_grad", dy, size=b.attrs(nid)["size"], input_hw=tuple(b.shape(x)[1:3]))]


def _upsample_grad_vjp(b, nid, g):
    return [b.op("upsample_bilinear", g, size=b.attrs(nid)["size"])]


register("upsample_bilinear", shape=_upsample_rule, vjp=_upsample_vjp, kind="opaque",
         doc="NHWC x upsampled by integer factors attrs.size with TensorFlow's bilinear (half-pixel) weights")
register("upsample_bilinear_grad", shape=_upsample_grad_rule, vjp=_upsample_grad_vjp, kind="opaque",
         doc="the transpose of upsample_bilinear: dy -> dx; attrs size, input_hw")
