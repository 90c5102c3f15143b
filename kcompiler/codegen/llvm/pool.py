"""CPU kernels of max and average pooling and their gradients: direct loops.

Every kernel walks the output pixels (n, oh, ow); for each it visits the window's
taps that lie inside the input (rows [i_lo, i_hi), columns [j_lo, j_hi), computed
per pixel, so padding is never read) and, innermost, the channels: NHWC keeps
them contiguous, and they are processed as 16-float vectors (then one by one for
the remainder). Numerics follow the references:

* max pooling is NaN-propagating (as np.max); padding counts as -inf;
* max_pool2d_grad sends each window's dy to the first tap in row-major order,
  padding included, that equals the window's maximum (a window whose maximum is NaN
  routes it to its first NaN tap, as np.argmax picks the first NaN; one whose maximum is
  -inf with padding before its first valid tap routes into the padding, i.e. nowhere),
  adding up where windows overlap;
* average pooling divides by the number of valid taps of each window.

Images are independent (the gradients' scatter-adds stay inside one image), so
large ops split the batch over the cores.
"""
from dataclasses import dataclass

import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ops.conv import output_size, same_padding
from ...ops.pool import pool_attrs
from .conv import as_i64, at, fill_zero, parts_for, run_parts, smax, smin, split
from .irutil import bounds_checking, c64, f32, for_range, i1, load, store
from .scalar import ScalarEmitter

# Below this many tap visits (window elements x channels) a pooling op stays on one thread.
PARALLEL_MIN_VISITS = 1 << 19
VECTOR_WIDTH = 16  # floats per channel block: one AVX-512 register
NEG_INF = float("-inf")


@dataclass(frozen=True)
class PoolGeometry:
    batch: int
    in_h: int
    in_w: int
    channels: int
    ph: int
    pw: int
    sh: int
    sw: int
    out_h: int
    out_w: int
    pad_top: int
    pad_left: int

    @property
    def visits(self):
        return self.batch * self.out_h * self.out_w * self.ph * self.pw * self.channels

    @property
    def image_floats(self):
        return self.in_h * self.in_w * self.channels

    @property
    def always_inside(self):
        return (self.pad_top == 0 and self.pad_left == 0
                and (self.out_h - 1) * self.sh + self.ph <= self.in_h
                and (self.out_w - 1) * self.sw + self.pw <= self.in_w)


def pool_geometry(op, x_shape, attrs):
    (ph, pw), (sh, sw), padding = pool_attrs(op, attrs)
    batch, in_h, in_w, channels = x_shape
    return PoolGeometry(
        batch=batch, in_h=in_h, in_w=in_w, channels=channels, ph=ph, pw=pw, sh=sh, sw=sw,
        out_h=output_size(in_h, ph, sh, 1, padding), out_w=output_size(in_w, pw, sw, 1, padding),
        pad_top=same_padding(in_h, ph, sh, 1, padding)[0], pad_left=same_padding(in_w, pw, sw, 1, padding)[0])


def lanes_type(width, t=f32):
    return t if width == 1 else ir.VectorType(t, width)


def splat(value, width, t=f32):
    c = ir.Constant(t, value)
    return c if width == 1 else ir.Constant(ir.VectorType(t, width), [value] * width)


def load_lanes(b, ptr, index, width):
    """``width`` consecutive elements from ptr[index] (one scalar when width == 1, through
    irutil's load, which a bounds-checked build checks)."""
    if width == 1:
        return load(b, ptr, as_i64(index), "float32") if ptr.type.pointee == f32 else b.load(at(b, ptr, index))
    p = at(b, ptr, index)
    return b.load(b.bitcast(p, lanes_type(width, p.type.pointee).as_pointer()), align=4)


def store_lanes(b, value, ptr, index):
    if isinstance(value.type, ir.VectorType):
        b.store(value, b.bitcast(at(b, ptr, index), value.type.as_pointer()), align=4)
    elif value.type == f32:
        store(b, value, ptr, as_i64(index), "float32")
    else:
        b.store(value, at(b, ptr, index))


def each_channel(b, channels, fn):
    """fn(c, width) over the channels: whole vectors of VECTOR_WIDTH lanes, then one by one.
    Written as vectors here because LLVM fully unrolls a short constant-trip channel loop
    before its loop vectoriser sees it, and its SLP vectoriser then often gives up (measured:
    max pooling over 32 channels ran at half speed). A bounds-checked build goes one by one,
    so that every access is checked."""
    full = 0 if bounds_checking() else channels // VECTOR_WIDTH * VECTOR_WIDTH
    if full:
        with for_range(b, full, step=VECTOR_WIDTH, name="cv") as c:
            fn(c, VECTOR_WIDTH)
    if channels > full:
        with for_range(b, channels, start=full, name="c") as c:
            fn(c, 1)


class Window:
    """One output pixel's window: ``out`` is the flat index of its first channel in y/dy,
    ``origin`` that of tap (0, 0) in x/dx (it may lie in the padding: only origin + offset of
    a valid tap is ever formed), [i_lo, i_hi) x [j_lo, j_hi) its taps inside the input."""

    def __init__(self, b, g, out, origin, i_lo, i_hi, j_lo, j_hi):
        self.b, self.g = b, g
        self.out, self.origin = out, origin
        self.i_lo, self.i_hi, self.j_lo, self.j_hi = i_lo, i_hi, j_lo, j_hi

    def count(self):
        b = self.b
        return b.mul(b.sub(as_i64(self.i_hi), as_i64(self.i_lo)), b.sub(as_i64(self.j_hi), as_i64(self.j_lo)))

    def taps(self, fn):
        """fn(tap, c, width) for every valid tap (flat index of its channel 0 in x) and channel
        block [c, c + width), in row-major tap order, channels innermost."""
        b, g = self.b, self.g
        with for_range(b, as_i64(self.i_hi), start=as_i64(self.i_lo), name="pi") as i:
            row = b.add(self.origin, b.mul(i, c64(g.in_w * g.channels)))
            with for_range(b, as_i64(self.j_hi), start=as_i64(self.j_lo), name="pj") as j:
                tap = b.add(row, b.mul(j, c64(g.channels)))
                each_channel(b, g.channels, lambda c, width: fn(tap, c, width))

    def channels(self, fn):
        each_channel(self.b, self.g.channels, fn)


def each_window(b, g, img_lo, img_hi, fn):
    """fn(Window) for every output pixel of images [img_lo, img_hi)."""
    with for_range(b, img_hi, start=img_lo, name="n") as n:
        with for_range(b, g.out_h, name="oh") as oh:
            ih0 = b.sub(b.mul(oh, c64(g.sh)), c64(g.pad_top))
            if g.always_inside:
                i_lo, i_hi = 0, g.ph
            else:
                i_lo = smin(b, smax(b, b.neg(ih0), 0), g.ph)
                i_hi = smax(b, smin(b, b.sub(c64(g.in_h), ih0), g.ph), i_lo)
            with for_range(b, g.out_w, name="ow") as ow:
                iw0 = b.sub(b.mul(ow, c64(g.sw)), c64(g.pad_left))
                if g.always_inside:
                    j_lo, j_hi = 0, g.pw
                else:
                    j_lo = smin(b, smax(b, b.neg(iw0), 0), g.pw)
                    j_hi = smax(b, smin(b, b.sub(c64(g.in_w), iw0), g.pw), j_lo)
                out = b.mul(b.add(b.mul(b.add(b.mul(n, c64(g.out_h)), oh), c64(g.out_w)), ow), c64(g.channels))
                origin = b.mul(b.add(b.mul(b.add(b.mul(n, c64(g.in_h)), ih0), c64(g.in_w)), iw0), c64(g.channels))
                fn(Window(b, g, out, origin, i_lo, i_hi, j_lo, j_hi))


def over_images(k, g, pointers, body, zero_output=False):
    """Run body(b, pointers, window) over every window, the batch split over the cores when the
    op is large; ``zero_output`` first zeroes each part's images of the last pointer (dx)."""
    def part_body(p):
        b = p.b
        window = body(b, p.buffers)  # entry-block setup (allocas); returns the per-window function
        img_lo, img_hi = split(b, p.index, p.count, g.batch, 1)
        if zero_output:
            fill_zero(b, p.buffers[-1], b.mul(img_lo, c64(g.image_floats)), b.mul(img_hi, c64(g.image_floats)),
                      "dx0")
        each_window(b, g, img_lo, img_hi, window)

    run_parts(k, pointers, parts_for(g.visits, g.batch, PARALLEL_MIN_VISITS), part_body)


@lowering("llvm", "max_pool2d")
def lower_max_pool2d(k):
    g = pool_geometry("max_pool2d", k.in_types[0].shape, k.attrs)

    def body(b, ptrs):
        x, y = ptrs
        e = ScalarEmitter(b)

        def window(w):
            w.channels(lambda c, n: store_lanes(b, splat(NEG_INF, n), y, b.add(w.out, c)))

            def tap(t, c, n):
                o = b.add(w.out, c)
                store_lanes(b, e.maxf(load_lanes(b, y, o, n), load_lanes(b, x, b.add(t, c), n)), y, o)
            w.taps(tap)
        return window

    over_images(k, g, [k.inputs[0], k.outputs[0]], body)


@lowering("llvm", "max_pool2d_grad")
def lower_max_pool2d_grad(k):
    g = pool_geometry("max_pool2d_grad", k.in_types[0].shape, k.attrs)
    i8 = ir.IntType(8)

    def body(b, ptrs):
        x, dy, dx = ptrs
        e = ScalarEmitter(b)
        # per channel: the window's maximum, and whether its dy has been routed yet
        peak = b.bitcast(b.alloca(ir.ArrayType(f32, g.channels)), f32.as_pointer())
        routed = b.bitcast(b.alloca(ir.ArrayType(i8, g.channels)), i8.as_pointer())

        def window(w):
            w.channels(lambda c, n: store_lanes(b, splat(NEG_INF, n), peak, c))
            w.taps(lambda t, c, n: store_lanes(
                b, e.maxf(load_lanes(b, peak, c, n), load_lanes(b, x, b.add(t, c), n)), peak, c))
            # padding before the first valid tap equals a -inf maximum first (and holds no gradient)
            if g.always_inside:
                pad_first = ir.Constant(i1, 0)
            else:
                pad_first = b.or_(b.icmp_signed(">", as_i64(w.i_lo), c64(0)),
                                  b.icmp_signed(">", as_i64(w.j_lo), c64(0)))

            def init(c, n):
                lost = b.fcmp_ordered("==", load_lanes(b, peak, c, n), splat(NEG_INF, n))
                if n > 1:
                    pad = b.select(pad_first, splat(1, n, i1), splat(0, n, i1))
                else:
                    pad = pad_first
                store_lanes(b, b.zext(b.and_(pad, lost), lanes_type(n, i8)), routed, c)
            w.channels(init)

            def tap(t, c, n):
                done = b.trunc(load_lanes(b, routed, c, n), lanes_type(n, i1))
                v = load_lanes(b, x, b.add(t, c), n)
                is_peak = b.or_(b.fcmp_ordered("==", v, load_lanes(b, peak, c, n)), b.fcmp_unordered("uno", v, v))
                hit = b.and_(b.not_(done), is_peak)
                share = b.select(hit, load_lanes(b, dy, b.add(w.out, c), n), splat(0.0, n))
                d = b.add(t, c)
                store_lanes(b, b.fadd(load_lanes(b, dx, d, n), share), dx, d)
                store_lanes(b, b.zext(b.or_(done, hit), lanes_type(n, i8)), routed, c)
            w.taps(tap)
        return window

    over_images(k, g, [k.inputs[0], k.inputs[1], k.outputs[0]], body, zero_output=True)


@lowering("llvm", "avg_pool2d")
def lower_avg_pool2d(k):
    g = pool_geometry("avg_pool2d", k.in_types[0].shape, k.attrs)

    def body(b, ptrs):
        x, y = ptrs

        def window(w):
            w.channels(lambda c, n: store_lanes(b, splat(0.0, n), y, b.add(w.out, c)))

            def tap(t, c, n):
                o = b.add(w.out, c)
                store_lanes(b, b.fadd(load_lanes(b, y, o, n), load_lanes(b, x, b.add(t, c), n)), y, o)
            w.taps(tap)
            inv = b.fdiv(ir.Constant(f32, 1.0), b.sitofp(w.count(), f32))

            def scale(c, n):
                o = b.add(w.out, c)
                store_lanes(b, b.fmul(load_lanes(b, y, o, n), _broadcast(b, inv, n)), y, o)
            w.channels(scale)
        return window

    over_images(k, g, [k.inputs[0], k.outputs[0]], body)


@lowering("llvm", "avg_pool2d_grad")
def lower_avg_pool2d_grad(k):
    h, w_ = k.attrs["input_hw"]
    dy_shape = k.in_types[0].shape
    g = pool_geometry("avg_pool2d_grad", (dy_shape[0], h, w_, dy_shape[3]), k.attrs)

    def body(b, ptrs):
        dy, dx = ptrs

        def window(w):
            inv = b.fdiv(ir.Constant(f32, 1.0), b.sitofp(w.count(), f32))

            def tap(t, c, n):
                d = b.add(t, c)
                share = b.fmul(load_lanes(b, dy, b.add(w.out, c), n), _broadcast(b, inv, n))
                store_lanes(b, b.fadd(load_lanes(b, dx, d, n), share), dx, d)
            w.taps(tap)
        return window

    over_images(k, g, [k.inputs[0], k.outputs[0]], body, zero_output=True)


def _broadcast(b, value, width):
    """A scalar in every lane."""
    if width == 1:
        return value
    t = ir.VectorType(value.type, width)
    first = b.insert_element(ir.Constant(t, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return b.shuffle_vector(first, ir.Constant(t, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                                            [0] * width))
