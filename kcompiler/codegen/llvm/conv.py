"""CPU kernels of conv2d and its two gradients: im2col and the generated SGEMM.

All three ops are matrix products over the *column matrix* of the input,
``cols`` (B*OH*OW, KH*KW*Cin), whose row r = (n, oh, ow) holds the input pixels
kernel window r sees, tap by tap (zeros where a tap falls into the padding). The
HWIO kernel is already the (KH*KW*Cin, Cout) matrix, and NHWC dy is (B*OH*OW, Cout):

    conv2d                  y  = cols @ K
    conv2d_backward_input   dcols = dy @ K^T, then col2im scatter-adds dcols into dx
    conv2d_backward_kernel  dK = cols^T @ dy

``cols`` is never built whole: rows go in chunks whose block of ``cols`` stays in
L2 (``COLS_BUDGET_FLOATS``). Padding is handled while copying: taps outside the
input are written as zeros (or skipped by col2im), never read.

Threads: an op with enough work splits its rows into ``nparts`` contiguous parts,
one per core; each part runs its own chunks with a single-threaded SGEMM, so
im2col/col2im run in parallel too. backward_input splits at image boundaries
(the dx regions of two images are disjoint, so the scatter-adds of two parts
never collide); backward_kernel gives every part its own dK accumulator and sums
them after the join. Small ops run as one part and let the support library's
multi-threaded SGEMM decide about each chunk's product. The single-threaded SGEMM
the parts call is compiled once per process, like the support library.

Element accesses (im2col, col2im, zeroing) go through irutil's load/store, so a
bounds-checked build checks them, scratch slices included.

A 1x1 kernel with stride 1 and no padding needs no im2col: x is its own column
matrix, and each op is one GEMM.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ops.conv import output_size, same_padding, window_attrs
from . import threads
from .irutil import (bounds_checking, c64, f32, for_range, get_function, i8p, i32, i64, load, register_buffer, store,
                     void)
from .support_library import declare_parallel_runner, declare_serial_gemm
from .jit import vector_width_attrs

# Floats of the column matrix one chunk may hold (512 KiB: half the L2 of a core
# here, so the GEMM's packing reads what im2col has just written from L2).
COLS_BUDGET_FLOATS = 1 << 17
# A chunk has at least this many rows so that each GEMM call amortises packing
# its other operand (the kernel, or dy) over enough output rows.
MIN_CHUNK_ROWS = 96
# Below this many multiply-adds an op stays on one part (starting a thread costs
# ~20 us; this is ~100 us of work on one core).
PARALLEL_MIN_MACS = 1 << 22

fptr = f32.as_pointer()


# ---- geometry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvGeometry:
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


# ---- small IR helpers ----------------------------------------------------------------------------

def as_i64(x):
    return c64(x) if isinstance(x, int) else x


def smin(b, x, y):
    x, y = as_i64(x), as_i64(y)
    return b.select(b.icmp_signed("<", x, y), x, y)


def smax(b, x, y):
    x, y = as_i64(x), as_i64(y)
    return b.select(b.icmp_signed(">", x, y), x, y)


def at(b, ptr, index):
    return b.gep(ptr, [as_i64(index)], inbounds=True)


# Element accesses go through irutil's load/store, so a bounds-checked build
# (KCOMPILER_BOUNDS_CHECK=1) checks them; the GEMM's own accesses are not checked.
def load_f32(b, ptr, index):
    return load(b, ptr, as_i64(index), "float32")


def store_f32(b, value, ptr, index):
    store(b, value, ptr, as_i64(index), "float32")


def fill_zero(b, ptr, start, stop, name="zero"):
    with for_range(b, as_i64(stop), start=as_i64(start), name=name) as e:
        store_f32(b, ir.Constant(f32, 0.0), ptr, e)


def add_into(b, dst, src, n, name="acc"):
    """dst[e] += src[e] for e < n."""
    with for_range(b, as_i64(n), name=name) as e:
        store_f32(b, b.fadd(load_f32(b, dst, e), load_f32(b, src, e)), dst, e)


def call_gemm(b, fn, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, beta=0.0):
    b.call(fn, [ir.Constant(i32, int(trans_a)), ir.Constant(i32, int(trans_b)), as_i64(M), as_i64(N), as_i64(K),
                ir.Constant(f32, 1.0), A, as_i64(lda), B, as_i64(ldb), ir.Constant(f32, beta), C, as_i64(ldc)])


def serial_gemm(module):
    """The single-threaded SGEMM, for work already split over the cores."""
    return declare_serial_gemm(module)


def split(b, part, nparts, units, unit_size):
    """[lo, hi) of part ``part`` when ``units`` units of ``unit_size`` rows are dealt out evenly."""
    lo = b.sdiv(b.mul(part, c64(units)), nparts)
    hi = b.sdiv(b.mul(b.add(part, c64(1)), c64(units)), nparts)
    return b.mul(lo, c64(unit_size)), b.mul(hi, c64(unit_size))


@contextmanager
def chunks(b, lo, hi, chunk_rows):
    """Loop over [lo, hi) in chunks of at most chunk_rows rows; yields (first row, row count)."""
    with for_range(b, hi, start=lo, step=chunk_rows, name="chunk") as first:
        yield first, smin(b, b.sub(hi, first), chunk_rows)


def parts_for(work, units, min_work=None):
    """How many threads an op of ``work`` multiply-adds (or element visits) that splits into
    ``units`` independent pieces should use."""
    if work < (PARALLEL_MIN_MACS if min_work is None else min_work):
        return 1
    return max(1, min(threads.default_nthreads(), units))


class Part:
    """What a part function's body works with: its builder, the kernel's buffers (reloaded from
    the context record), which part it is (i64 ``index`` of ``count``), the scratch buffer."""

    def __init__(self, b, buffers, index, count, scratch, status):
        self.b, self.buffers, self.index, self.count = b, buffers, index, count
        self.scratch, self.status = scratch, status

    def slice(self, base, offset, floats):
        """The ``floats``-long buffer at base + offset (bounds-checked on its own in checked builds)."""
        return self.buffer(at(self.b, base, offset), floats)

    def buffer(self, ptr, floats):
        if bounds_checking():
            register_buffer(ptr, floats, self.status)
        return ptr


def run_parts(k, buffers, nparts, body, scratch_floats=0, after=None):
    """Run ``body(Part)`` for parts 0..nparts-1 (in parallel when nparts > 1), in a part function
    of its own; ``buffers`` are pointers of the kernel (inputs/outputs). The scratch buffer,
    ``scratch_floats`` floats aligned to 64 bytes and shared by all parts (each takes its own
    slice), is allocated by the calling thread (a fresh thread's malloc arena would fault its
    pages in on every call) and freed after ``after(b, scratch)`` has run in the kernel, once
    every part is done."""
    module, kb = k.module, k.b
    sizes = k.buffer_sizes()
    ctx_t = ir.LiteralStructType([p.type for p in buffers] + [fptr, k.status.type])
    fn = ir.Function(module, threads.PART_FN_TYPE, name=module.get_unique_name(f"{k.function.name}.part"))
    fn.linkage = "internal"
    vector_width_attrs(fn)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], ctx_t.as_pointer())
    zero = ir.Constant(i32, 0)
    values = [b.load(b.gep(rec, [zero, ir.Constant(i32, j)], inbounds=True)) for j in range(len(ctx_t.elements))]
    part = Part(b, values[:-2], fn.args[1], fn.args[2], values[-2], values[-1])
    for p, value in zip(buffers, part.buffers):
        part.buffer(value, sizes[id(p)])
    part.buffer(part.scratch, scratch_floats)
    body(part)
    b.ret_void()

    ctx = kb.alloca(ctx_t)  # first, while the builder is still in the entry block
    raw = None
    scratch = ir.Constant(fptr, None)
    if scratch_floats:
        malloc = get_function(module, "malloc", i8p, [i64])
        raw = kb.call(malloc, [c64(scratch_floats * 4 + 64)])
        with kb.if_then(kb.icmp_unsigned("==", kb.ptrtoint(raw, i64), c64(0)), likely=False):
            kb.call(get_function(module, "llvm.trap", void, []), [])  # out of memory, as the SGEMM does
            kb.unreachable()
        scratch = kb.inttoptr(kb.and_(kb.add(kb.ptrtoint(raw, i64), c64(63)), c64(~63)), fptr)
    for j, v in enumerate(list(buffers) + [scratch, k.status]):
        kb.store(v, kb.gep(ctx, [zero, ir.Constant(i32, j)], inbounds=True))
    if nparts > 1:
        threads.emit_parallel_call(kb, fn, ctx, nparts, runner=declare_parallel_runner(module))
    else:
        kb.call(fn, [kb.bitcast(ctx, i8p), c64(0), c64(1)])
    if after is not None:
        after(kb, scratch)
    if raw is not None:
        kb.call(get_function(module, "free", void, [i8p]), [raw])


def _num(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ---- im2col and col2im -----------------------------------------------------------------------------

def emit_im2col(b, g, x, cols, first, count, scatter=False):
    """Rows [first, first + count) of the column matrix into ``cols`` (row t of the chunk at
    cols + t * width): cols[t, (i*KW + j)*Cin + c] = x[n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c],
    0 for taps in the padding. With ``scatter`` it is col2im, the transpose: x[...] += cols[...]
    (``x`` is then dx), padding taps skipped."""
    span = g.kw * g.cin        # one kernel row of taps
    row_floats = g.in_w * g.cin
    with for_range(b, count, name="row") as t:
        r = b.add(first, t)
        img = b.udiv(r, c64(g.out_h * g.out_w))
        pix = b.urem(r, c64(g.out_h * g.out_w))
        oh, ow = b.udiv(pix, c64(g.out_w)), b.urem(pix, c64(g.out_w))
        ih0 = b.sub(b.mul(oh, c64(g.sh)), c64(g.pad_top))
        iw0 = b.sub(b.mul(ow, c64(g.sw)), c64(g.pad_left))
        image = b.mul(img, c64(g.in_h * row_floats))
        row = b.mul(t, c64(g.width))
        if g.always_inside:
            lo, hi = 0, g.kw
        elif g.dw == 1:
            # taps j in [lo, hi) of a kernel row are inside the input, and contiguous there
            lo = smin(b, smax(b, b.neg(iw0), 0), g.kw)
            hi = smax(b, smin(b, b.sub(c64(g.in_w), iw0), g.kw), lo)
        with for_range(b, g.kh, name="ki") as i:
            ih = b.add(ih0, b.mul(i, c64(g.dh)))
            dst = b.add(row, b.mul(i, c64(span)))
            src = b.add(image, b.mul(ih, c64(row_floats)))  # the input row, when ih is inside

            def copy_row():
                if g.dw == 1:
                    _copy_span(b, x, cols, b.add(src, b.mul(iw0, c64(g.cin))), dst, lo, hi, g, scatter)
                else:
                    _copy_taps(b, x, cols, src, iw0, dst, g, scatter)

            if g.always_inside:
                copy_row()
            else:
                inside = b.icmp_unsigned("<", ih, c64(g.in_h))  # a negative ih is a huge unsigned
                if scatter:
                    with b.if_then(inside):
                        copy_row()
                else:
                    with b.if_else(inside) as (then, otherwise):
                        with then:
                            copy_row()
                        with otherwise:
                            fill_zero(b, cols, dst, b.add(dst, c64(span)))


def _copy_span(b, x, cols, src, dst, lo, hi, g, scatter):
    """Taps j in [lo, hi) of one kernel row (dilation 1: KW*Cin contiguous floats of both x and
    cols, from src and dst); the taps outside are zeroed in cols. ``src + e`` is only formed for
    e in the valid range, so no index ever points outside x."""
    lo_e, hi_e = (b.mul(as_i64(v), c64(g.cin)) if not isinstance(v, int) else v * g.cin for v in (lo, hi))
    if not scatter and not isinstance(lo, int):
        fill_zero(b, cols, dst, b.add(dst, as_i64(lo_e)))
    with for_range(b, as_i64(hi_e), start=as_i64(lo_e), name="e") as e:
        _move(b, x, b.add(src, e), cols, b.add(dst, e), scatter)
    if not scatter and not isinstance(hi, int):
        fill_zero(b, cols, b.add(dst, hi_e), b.add(dst, c64(g.kw * g.cin)))


def _copy_taps(b, x, cols, src, iw0, dst, g, scatter):
    """One kernel row of taps with dilation > 1: tap by tap, Cin floats each."""
    with for_range(b, g.kw, name="kj") as j:
        iw = b.add(iw0, b.mul(j, c64(g.dw)))
        d = b.add(dst, b.mul(j, c64(g.cin)))

        def copy():
            s = b.add(src, b.mul(iw, c64(g.cin)))
            with for_range(b, g.cin, name="c") as c:
                _move(b, x, b.add(s, c), cols, b.add(d, c), scatter)

        if g.always_inside:
            copy()
        else:
            inside = b.icmp_unsigned("<", iw, c64(g.in_w))
            if scatter:
                with b.if_then(inside):
                    copy()
            else:
                with b.if_else(inside) as (then, otherwise):
                    with then:
                        copy()
                    with otherwise:
                        fill_zero(b, cols, d, b.add(d, c64(g.cin)))


def _move(b, x, xi, cols, ci, scatter):
    """cols[ci] = x[xi], or with ``scatter`` x[xi] += cols[ci]."""
    if scatter:
        store_f32(b, b.fadd(load_f32(b, x, xi), load_f32(b, cols, ci)), x, xi)
    else:
        store_f32(b, load_f32(b, x, xi), cols, ci)


def _chunk_rows(g, rows_per_part):
    return max(1, min(rows_per_part, max(MIN_CHUNK_ROWS, COLS_BUDGET_FLOATS // g.width)))


def _aligned(n):
    return (n + 15) // 16 * 16  # whole 64-byte lines, so every part's slice stays aligned


# ---- the three ops ---------------------------------------------------------------------------

@lowering("llvm", "conv2d")
def lower_conv2d(k, epilogue=None):
    """``epilogue`` (codegen/llvm/epilogue.py) finishes each chunk of output rows right after
    its GEMM, while they are in cache."""
    x, kernel = k.inputs
    y = k.outputs[0]
    g = conv_geometry("conv2d", k.in_types[0].shape, k.in_types[1].shape, k.attrs)
    extra = epilogue.pointers[1:] if epilogue is not None else []  # pointers[0] is y
    if g.pointwise:
        k.call_gemm(False, False, g.rows, g.cout, g.cin, x, g.cin, kernel, g.cout, y, g.cout)
        if epilogue is not None:
            epilogue.emit(k.b, epilogue.pointers, 0, g.rows)
        return
    nparts = parts_for(g.rows * g.width * g.cout, g.rows // MIN_CHUNK_ROWS)
    chunk = _chunk_rows(g, -(-g.rows // nparts))
    cols_floats = _aligned(chunk * g.width)
    gemm = serial_gemm(k.module) if nparts > 1 else k.gemm()

    def body(p):
        b, (x, kernel, y), rest = p.b, p.buffers[:3], p.buffers[3:]
        cols = p.slice(p.scratch, b.mul(p.index, c64(cols_floats)), cols_floats)
        lo, hi = split(b, p.index, p.count, g.rows, 1)
        with chunks(b, lo, hi, chunk) as (first, count):
            emit_im2col(b, g, x, cols, first, count)
            call_gemm(b, gemm, False, False, count, g.cout, g.width, cols, g.width, kernel, g.cout,
                      at(b, y, b.mul(first, c64(g.cout))), g.cout)
            if epilogue is not None:
                epilogue.emit(b, [y] + rest, first, count)

    run_parts(k, [x, kernel, y] + extra, nparts, body, scratch_floats=nparts * cols_floats)


@lowering("llvm", "conv2d_backward_input")
def lower_conv2d_backward_input(k, epilogue=None):
    """``epilogue`` finishes each part's images once their col2im is complete (the parts own
    whole images, so those pixels are final)."""
    dy, kernel = k.inputs
    dx = k.outputs[0]
    g = conv_geometry("conv2d_backward_input", k.out_types[0].shape, k.in_types[1].shape, k.attrs)
    extra = epilogue.pointers[1:] if epilogue is not None else []  # pointers[0] is dx
    if g.pointwise:
        k.call_gemm(False, True, g.rows, g.cin, g.cout, dy, g.cout, kernel, g.cout, dx, g.cin)
        if epilogue is not None:
            epilogue.emit(k.b, epilogue.pointers, 0, g.batch * g.in_h * g.in_w)
        return
    image_rows = g.out_h * g.out_w
    image_floats = g.in_h * g.in_w * g.cin
    nparts = parts_for(g.rows * g.width * g.cout, g.batch)
    chunk = _chunk_rows(g, -(-g.batch // nparts) * image_rows)
    cols_floats = _aligned(chunk * g.width)
    gemm = serial_gemm(k.module) if nparts > 1 else k.gemm()

    def body(p):
        b, (dy, kernel, dx), rest = p.b, p.buffers[:3], p.buffers[3:]
        cols = p.slice(p.scratch, b.mul(p.index, c64(cols_floats)), cols_floats)
        img_lo, img_hi = split(b, p.index, p.count, g.batch, 1)
        fill_zero(b, dx, b.mul(img_lo, c64(image_floats)), b.mul(img_hi, c64(image_floats)), name="dx0")
        with chunks(b, b.mul(img_lo, c64(image_rows)), b.mul(img_hi, c64(image_rows)), chunk) as (first, count):
            call_gemm(b, gemm, False, True, count, g.width, g.cout, at(b, dy, b.mul(first, c64(g.cout))), g.cout,
                      kernel, g.cout, cols, g.width)
            emit_im2col(b, g, dx, cols, first, count, scatter=True)
        if epilogue is not None:
            pixels = g.in_h * g.in_w
            epilogue.emit(b, [dx] + rest, b.mul(img_lo, c64(pixels)), b.mul(b.sub(img_hi, img_lo), c64(pixels)))

    run_parts(k, [dy, kernel, dx] + extra, nparts, body, scratch_floats=nparts * cols_floats)


@lowering("llvm", "conv2d_backward_kernel")
def lower_conv2d_backward_kernel(k):
    x, dy = k.inputs
    dk = k.outputs[0]
    g = conv_geometry("conv2d_backward_kernel", k.in_types[0].shape, k.out_types[0].shape, k.attrs)
    if g.pointwise:
        k.call_gemm(True, False, g.cin, g.cout, g.rows, x, g.cin, dy, g.cout, dk, g.cout)
        return
    dk_floats = g.width * g.cout
    nparts = parts_for(g.rows * g.width * g.cout, g.rows // MIN_CHUNK_ROWS)
    chunk = _chunk_rows(g, -(-g.rows // nparts))
    cols_floats = _aligned(chunk * g.width)
    partial_floats = _aligned(dk_floats)
    gemm = serial_gemm(k.module) if nparts > 1 else k.gemm()

    def body(p):
        b, (x, dy, dk) = p.b, p.buffers
        cols = p.slice(p.scratch, b.mul(p.index, c64(cols_floats)), cols_floats)
        # part 0 accumulates into dk itself, part i > 0 into partial i - 1 after the column blocks
        slot = smax(b, b.sub(p.index, c64(1)), 0)
        partial = at(b, p.scratch, b.add(c64(nparts * cols_floats), b.mul(slot, c64(partial_floats))))
        acc = p.buffer(b.select(b.icmp_signed("==", p.index, c64(0)), dk, partial), dk_floats)
        fill_zero(b, acc, 0, dk_floats, name="dk0")
        lo, hi = split(b, p.index, p.count, g.rows, 1)
        with chunks(b, lo, hi, chunk) as (first, count):
            emit_im2col(b, g, x, cols, first, count)
            call_gemm(b, gemm, True, False, g.width, g.cout, count, cols, g.width,
                      at(b, dy, b.mul(first, c64(g.cout))), g.cout, acc, g.cout, beta=1.0)

    def reduce_partials(b, scratch):
        for i in range(1, nparts):
            add_into(b, dk, at(b, scratch, c64(nparts * cols_floats + (i - 1) * partial_floats)), dk_floats)

    run_parts(k, [x, dy, dk], nparts, body, scratch_floats=nparts * cols_floats + (nparts - 1) * partial_floats,
              after=reduce_partials)
