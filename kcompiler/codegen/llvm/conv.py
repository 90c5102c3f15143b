"""CPU kernels of conv2d and its two gradients, as implicit GEMMs.

All three ops are matrix products over the *column matrix* of the input,
``cols`` (B*OH*OW, KH*KW*Cin), whose row r = (n, oh, ow) holds the input pixels
kernel window r sees, tap by tap (zeros where a tap falls into the padding). The
HWIO kernel is already the (KH*KW*Cin, Cout) matrix, and NHWC dy is (B*OH*OW, Cout):

    conv2d                  y  = cols @ K
    conv2d_backward_input   dx = col2im(dy @ K^T), summed tap by tap
    conv2d_backward_kernel  dK = cols^T @ dy

No column matrix is built: register tiles (conv_tiles.py) read the input where it lies,
through a table of tap offsets, and dy in place. When some window reaches into the
padding, the forward and weight-gradient tiles read zero-padded copies of the images
instead, made a group of images at a time in scratch memory, so a tile never tests an
index; the input gradient skips the taps whose pixel lies in the padding.

* conv2d: each part (one per core) takes a contiguous range of output rows, packs the
  kernel into NR-wide panels once (small: KH*KW*Cin x Cout), and computes blocks of
  ``BLOCK_TILES`` row tiles, every panel of each; the epilogue finishes each block while
  it is in cache.
* conv2d_backward_kernel: tiles of dK (rows (tap, c) x columns) summed over the output
  pixels, which go through in blocks of ``BLOCK_FLOATS`` (rows of one image, or whole
  images) that every tile of a part reads while they are in L1. The parts split the batch
  (their small partial dK added after the join) or, when dK is large against the input and
  dy, the tiles (nothing to merge; every part reads all of the input and dy).
* conv2d_backward_input: the parts own whole images (the dx regions of two images are
  disjoint); for each tile of dy rows, each tap's product is added into the dx pixels that
  tap's windows read. Groups of images whose dx stays in L2 (``DX_GROUP_FLOATS``) are
  zeroed, summed into and finished by the epilogue in turn.

Element accesses outside the tiles (padding copies, packing, zeroing, bias sums) go through
irutil's load/store, so a bounds-checked build checks them, scratch slices included; the
tiles' own accesses are checked at their first and last element per call.

A 1x1 kernel with stride 1 and no padding needs no column matrix: x is its own, and each
op is one GEMM (the support library's, on both cores).
"""
from contextlib import contextmanager

import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ops.conv import conv_geometry
from . import threads
from .irutil import (bounds_checking, c64, f32, for_range, get_function, i8p, i32, i64, load, register_buffer, store,
                     void)
from .conv_tiles import (Image, emit_forward_tile, emit_input_gradient_tile, emit_weight_gradient_tile, forward_tile,
                         host_tile, store_origins, tap_offset, window_origin)
from .support_library import declare_parallel_runner
from .jit import vector_width_attrs

# Floats of dx one group of images of the input gradient holds (in L2 while it is summed into
# and finished by the epilogue).
DX_GROUP_FLOATS = 1 << 14
# Row tiles a forward block computes before the epilogue finishes them in cache. Measured on
# one Zen 2 core, bias + ReLU epilogues: 2 tiles (12 rows) cost W3's first convolution 1.21 ms
# and W2's 0.82, 3 to 64 tiles 1.75 and 1.10-1.22 (conv alone: 1.15, 0.78); W3's second
# convolution (Cout 64) did not care (3.91-3.96).
BLOCK_TILES = 2
# Floats of padded images one group holds (the padded copies are made a group at a time).
GROUP_BUDGET_FLOATS = 1 << 16
# Floats of input and dy one block of the weight gradient reads: every tile of a part goes
# through the block while it is in L1 (32 KiB here). On the Zen 2 host, W2's and W3's weight
# gradients ran at 65-73 GFLOP/s on one core with 2^12 (too little work per tile call) and
# with 2^14-2^16 (the block no longer in L1), 89-99 with 2^13.
BLOCK_FLOATS = 1 << 13
# Below this many multiply-adds an op stays on one part: ~10 us of work on one core (handing a
# part to the pool's helper thread costs ~1 us; starting a thread per call cost ~20 us, with a
# threshold of 2^22).
PARALLEL_MIN_MACS = 1 << 19

fptr = f32.as_pointer()


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
    every part is done.

    The body is a function of its own whose pointer parameters are ``noalias`` (the memory
    plan never gives an output bytes an operand of the same kernel occupies — an output computed
    in place is stored through its operand's pointer, never its own — and the scratch
    buffer is fresh): inlined into the part function, that lets LLVM vectorise loops that
    store one buffer and load others (the epilogues) without runtime alias checks. Without
    it, W3's bias and ReLU epilogues stayed scalar."""
    module, kb = k.module, k.b
    sizes = k.buffer_sizes()
    pointer_types = [p.type for p in buffers] + [fptr, k.status.type]
    inner = ir.Function(module, ir.FunctionType(void, pointer_types + [i64, i64]),
                        name=module.get_unique_name(f"{k.function.name}.body"))
    inner.linkage = "internal"
    vector_width_attrs(inner)
    for a in inner.args[:len(buffers) + 1]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(inner.append_basic_block("entry"))
    *pointers, scratch_arg, status_arg, index, count = inner.args
    part = Part(b, pointers, index, count, scratch_arg, status_arg)
    for p, value in zip(buffers, part.buffers):
        part.buffer(value, sizes[id(p)])
    part.buffer(part.scratch, scratch_floats)
    body(part)
    b.ret_void()

    ctx_t = ir.LiteralStructType(pointer_types)
    fn = ir.Function(module, threads.PART_FN_TYPE, name=module.get_unique_name(f"{k.function.name}.part"))
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], ctx_t.as_pointer())
    zero = ir.Constant(i32, 0)
    values = [b.load(b.gep(rec, [zero, ir.Constant(i32, j)], inbounds=True)) for j in range(len(ctx_t.elements))]
    b.call(inner, values + [fn.args[1], fn.args[2]])
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


# ---- what the implicit-GEMM tiles read -------------------------------------------------------

def image_layout(g):
    """(the Image the tiles read, whether it is a padded copy): the input itself when no window
    reaches into the padding, else copies of its images padded to the windows' extent."""
    if g.always_inside:
        return Image(g.in_w, g.cin, g.in_h * g.in_w * g.cin), False
    height = (g.out_h - 1) * g.sh + (g.kh - 1) * g.dh + 1
    width = (g.out_w - 1) * g.sw + (g.kw - 1) * g.dw + 1
    return Image(width, g.cin, height * width * g.cin), True


def emit_pad(b, g, image, x, n0, n1, dst):
    """Images [n0, n1) of x into dst (``image.floats`` apart), zero-padded: padded row ph and
    column pw hold input pixel (ph - pad_top, pw - pad_left), or zeros."""
    row = image.width * g.cin
    height = image.floats // row
    left = min(g.pad_left, image.width)             # columns [left, right) hold input pixels
    right = min(g.pad_left + g.in_w, image.width)
    with for_range(b, b.sub(n1, n0), name="pimg") as j:
        src_image = b.mul(b.add(n0, j), c64(g.in_h * g.in_w * g.cin))
        with for_range(b, height, name="ph") as ph:
            d = b.add(b.mul(j, c64(image.floats)), b.mul(ph, c64(row)))
            ih = b.sub(ph, c64(g.pad_top))
            with b.if_else(b.icmp_unsigned("<", ih, c64(g.in_h))) as (inside, outside):
                with inside:
                    fill_zero(b, dst, d, b.add(d, c64(left * g.cin)))
                    src = b.add(src_image, b.mul(ih, c64(g.in_w * g.cin)))  # column left is input column 0
                    inner = b.add(d, c64(left * g.cin))
                    with for_range(b, (right - left) * g.cin, name="pe") as e:
                        store_f32(b, load_f32(b, x, b.add(src, e)), dst, b.add(inner, e))
                    fill_zero(b, dst, b.add(d, c64(right * g.cin)), b.add(d, c64(row)))
                with outside:
                    fill_zero(b, dst, d, b.add(d, c64(row)))


def emit_pack_kernel(b, g, t, kernel, packed):
    """The (KH*KW*Cin, Cout) kernel into NR-wide panels for the forward tile:
    packed[(p * KDIM + k) * NR + j] = kernel[k, p * NR + j], zero past Cout."""
    with for_range(b, -(-g.cout // t.nr), name="kp") as p:
        valid = smin(b, b.sub(c64(g.cout), b.mul(p, c64(t.nr))), t.nr)
        with for_range(b, g.width, name="kk") as kk:
            dst = b.mul(b.add(b.mul(p, c64(g.width)), kk), c64(t.nr))
            src = b.add(b.mul(kk, c64(g.cout)), b.mul(p, c64(t.nr)))
            with for_range(b, valid, name="kj") as j:
                store_f32(b, load_f32(b, kernel, b.add(src, j)), packed, b.add(dst, j))
            fill_zero(b, packed, b.add(dst, valid), b.add(dst, c64(t.nr)), name="kz")


# Bounds-checked builds check the first and last element each tile call reads and writes (the
# tiles' own accesses are not checked, like the SGEMM's; every element lies between those two).

def _check_range(b, ptr, first, last):
    load_f32(b, ptr, first)
    load_f32(b, ptr, last)


def _last_tap(g, image):
    return ((g.kh - 1) * g.dh * image.width + (g.kw - 1) * g.dw) * image.cin + image.cin - 1


def check_forward_tile(b, g, image, x0, n0, r0, mr, y, y_row0):
    """Tile rows [r0, r0 + mr) read x0 (the image group from image n0) and write y (which
    starts at row ``y_row0``)."""
    last = b.add(r0, b.sub(mr, c64(1)))
    _check_range(b, x0, window_origin(b, g, image, r0, n0),
                 b.add(window_origin(b, g, image, last, n0), c64(_last_tap(g, image))))
    _check_range(b, y, b.mul(b.sub(r0, y_row0), c64(g.cout)),
                 b.add(b.mul(b.sub(last, y_row0), c64(g.cout)), c64(g.cout - 1)))


def check_weight_gradient_tile(b, g, image, t, checked_x, dy, n0, n1, oh0, nrows, m0, mr, dk, panel, nr):
    """A weight-gradient tile call over output rows [oh0, oh0 + nrows) of images [n0, n1) reads
    x (``checked_x``: the buffer holding image n0 and its offset there) and dy, and writes rows
    [m0, m0 + mr) of panel ``panel`` (``nr`` valid columns) of dk."""
    x, x_base = checked_x
    dy_image = g.out_h * g.out_w * g.cout
    base = b.add(x_base, b.mul(oh0, c64(g.sh * image.width * image.cin)))
    last_row = b.sub(nrows, c64(1))
    last_pixel = b.mul(b.add(b.mul(last_row, c64(g.sh * image.width)), c64((g.out_w - 1) * g.sw)), c64(image.cin))
    last_m = b.add(m0, b.sub(mr, c64(1)))
    _check_range(b, x, b.add(base, tap_offset(b, g, image, m0)),
                 b.add(b.add(base, b.mul(b.sub(b.sub(n1, n0), c64(1)), c64(image.floats))),
                       b.add(last_pixel, tap_offset(b, g, image, last_m))))
    column = b.mul(panel, c64(t.nr))
    first_dy = b.add(b.add(b.mul(n0, c64(dy_image)), b.mul(oh0, c64(g.out_w * g.cout))), column)
    last_dy = b.add(b.add(b.mul(b.sub(n1, c64(1)), c64(dy_image)),
                          b.mul(b.add(b.add(oh0, last_row), c64(1)), c64(g.out_w * g.cout))),
                    b.add(column, c64(nr - 1 - g.cout)))
    _check_range(b, dy, first_dy, last_dy)
    _check_range(b, dk, b.add(b.mul(m0, c64(g.cout)), column),
                 b.add(b.mul(last_m, c64(g.cout)), b.add(column, c64(nr - 1))))


def _aligned(n):
    return (n + 15) // 16 * 16  # whole 64-byte lines, so every part's slice stays aligned


# ---- the three ops ---------------------------------------------------------------------------

@lowering("llvm", "conv2d")
def lower_conv2d(k, epilogue=None, pool=None):
    """``epilogue`` (codegen/llvm/epilogue.py) finishes each block of output rows right after
    its tiles, while they are in cache. ``pool`` (epilogue.PooledOutput) then pools the rows of
    windows each block completes; the parts then own whole images, and blocks do not cross
    images. When nothing reads the activation (``pool.store_input`` false) each part computes
    its images one after another in scratch memory of one image, y is never stored, and the
    pooling, not ``epilogue``, finishes the product's elements it reads (``pool.finish``)."""
    x, kernel = k.inputs
    y = k.outputs[0]
    g = conv_geometry("conv2d", k.in_types[0].shape, k.in_types[1].shape, k.attrs)
    extra = epilogue.pointers[1:] if epilogue is not None else []  # pointers[0] is y
    pixels = g.out_h * g.out_w
    if pool is not None and pool.finish is not None:
        epilogue = None  # the pooling finishes what it reads (y is kept in scratch)
    if g.pointwise:  # one GEMM: y is stored whole (its buffer exists even when nothing reads it)
        k.call_gemm(False, False, g.rows, g.cout, g.cin, x, g.cin, kernel, g.cout, y, g.cout)
        if epilogue is not None:
            epilogue.emit(k.b, [y] + extra, 0, g.rows)
        if pool is not None:
            with for_range(k.b, g.batch, name="pimage") as n:
                pool.emit(k.b, [y] + extra, n, c64(0), c64(pixels))
        return
    from .winograd import lower_winograd_conv2d, winograd_algorithm  # (winograd.py builds on this module)
    algorithm = winograd_algorithm(g)
    if algorithm is not None:
        lower_winograd_conv2d(k, g, algorithm, [x, kernel, y] + extra, epilogue, pool)
        return
    t = forward_tile(host_tile())
    image, padded = image_layout(g)
    panels, edge = divmod(g.cout, t.nr)
    full_tile = emit_forward_tile(k.module, g, image, t, t.nr) if panels else None
    edge_tile = emit_forward_tile(k.module, g, image, t, edge) if edge else None
    packed_floats = _aligned(-(-g.cout // t.nr) * t.nr * g.width)
    group = max(1, GROUP_BUDGET_FLOATS // image.floats)
    pad_floats = _aligned(group * image.floats) if padded else 0
    block = t.mr * BLOCK_TILES
    nparts = parts_for(g.rows * g.width * g.cout, g.batch if pool is not None else -(-g.rows // block))
    in_scratch = pool is not None and not pool.store_input  # y of one image at a time, in scratch
    image_floats = _aligned(pixels * g.cout) if in_scratch else 0

    def body(p):
        b, (x, kernel, y), rest = p.b, p.buffers[:3], p.buffers[3:]
        with b.goto_entry_block():
            origins = b.alloca(ir.ArrayType(i64, t.mr))
        origins = b.bitcast(origins, i64.as_pointer())
        own = b.mul(p.index, c64(packed_floats + pad_floats + image_floats))
        packed = p.slice(p.scratch, own, packed_floats)
        if in_scratch:
            y = p.slice(p.scratch, b.add(own, c64(packed_floats + pad_floats)), image_floats)
        emit_pack_kernel(b, g, t, kernel, packed)
        if pool is not None:
            lo, hi = split(b, p.index, p.count, g.batch, pixels)
        else:
            lo, hi = split(b, p.index, p.count, -(-g.rows // t.mr), t.mr)
            hi = smin(b, hi, g.rows)

        def rows(x0, n0, first_row, end_row):
            y_row0 = first_row if in_scratch else c64(0)  # y's first row in its buffer
            with chunks(b, first_row, end_row, block) as (first, count):
                end = b.add(first, count)
                with for_range(b, end, start=first, step=t.mr, name="tile") as r0:
                    mr = smin(b, b.sub(end, r0), t.mr)
                    if bounds_checking():
                        check_forward_tile(b, g, image, x0, n0, r0, mr, y, y_row0)
                    store_origins(b, g, image, t, r0, mr, n0, origins)
                    c = at(b, y, b.mul(b.sub(r0, y_row0), c64(g.cout)))
                    if panels:
                        with for_range(b, panels, name="panel") as jp:
                            b.call(full_tile, [x0, origins, mr, at(b, packed, b.mul(jp, c64(g.width * t.nr))),
                                               at(b, c, b.mul(jp, c64(t.nr)))])
                    if edge:
                        b.call(edge_tile, [x0, origins, mr, at(b, packed, c64(panels * g.width * t.nr)),
                                           at(b, c, c64(panels * t.nr))])
                if epilogue is not None:
                    epilogue.emit(b, [y] + rest, b.sub(first, y_row0), count)
                if pool is not None:  # first_row is the image's first row
                    n = b.udiv(first_row, c64(pixels))
                    pool.emit(b, [y] + rest, n, b.sub(first, first_row), b.sub(end, first_row),
                              source_image=c64(0) if in_scratch else None)

        def images(x0, n0, first_row, end_row):
            """rows(), image by image when pooling."""
            if pool is None:
                rows(x0, n0, first_row, end_row)
                return
            with for_range(b, end_row, start=first_row, step=pixels, name="image") as r:
                rows(x0, n0, r, b.add(r, c64(pixels)))

        if not padded:
            images(x, c64(0), lo, hi)
            return
        pad = p.slice(p.scratch, b.add(own, c64(packed_floats)), pad_floats)
        n_lo, n_hi = b.udiv(lo, c64(pixels)), b.udiv(b.add(hi, c64(pixels - 1)), c64(pixels))
        with for_range(b, n_hi, start=n_lo, step=group, name="group") as n0:
            n1 = smin(b, b.add(n0, c64(group)), n_hi)
            emit_pad(b, g, image, x, n0, n1, pad)
            images(pad, n0, smax(b, lo, b.mul(n0, c64(pixels))), smin(b, hi, b.mul(n1, c64(pixels))))

    run_parts(k, [x, kernel, y] + extra, nparts, body,
              scratch_floats=nparts * (packed_floats + pad_floats + image_floats))


@lowering("llvm", "conv2d_backward_input")
def lower_conv2d_backward_input(k, epilogue=None):
    """dx summed tap by tap: for every tile of dy rows and every tap, the input-gradient tile
    adds that tap's product into the dx pixels the tap's windows read (conv_tiles.py). The
    parts own whole images (the dx regions of two images are disjoint); each goes through
    groups of images whose dx stays in L2: zeroed, summed into, then finished by
    ``epilogue`` while in cache."""
    dy, kernel = k.inputs
    dx = k.outputs[0]
    g = conv_geometry("conv2d_backward_input", k.out_types[0].shape, k.in_types[1].shape, k.attrs)
    extra = epilogue.pointers[1:] if epilogue is not None else []  # pointers[0] is dx
    if g.pointwise:
        k.call_gemm(False, True, g.rows, g.cin, g.cout, dy, g.cout, kernel, g.cout, dx, g.cin)
        if epilogue is not None:
            epilogue.emit(k.b, epilogue.pointers, 0, g.batch * g.in_h * g.in_w)
        return
    from .winograd import lower_winograd_conv2d_gradients, winograd_algorithm
    algorithm = winograd_algorithm(g)
    if algorithm is not None:
        lower_winograd_conv2d_gradients(k, g, algorithm, dy, input_grad=(kernel, dx, epilogue))
        return
    t = host_tile()
    panels, edge = divmod(g.cin, t.nr)
    all_panels = panels + bool(edge)
    full_tile = emit_input_gradient_tile(k.module, g, t, t.nr) if panels else None
    edge_tile = emit_input_gradient_tile(k.module, g, t, edge) if edge else None
    taps = g.kh * g.kw
    panel_floats = g.cout * t.nr
    packed_floats = _aligned(taps * all_panels * panel_floats)
    pixels, image_floats = g.out_h * g.out_w, g.in_h * g.in_w * g.cin
    group = max(1, DX_GROUP_FLOATS // image_floats)
    nparts = parts_for(g.rows * g.width * g.cout, g.batch)

    def body(p):
        b, (dy, kernel, dx), rest = p.b, p.buffers[:3], p.buffers[3:]
        with b.goto_entry_block():
            arrays = b.alloca(ir.ArrayType(i64, 2 * t.mr))
        rows = b.bitcast(arrays, i64.as_pointer())
        targets = at_i64(b, rows, t.mr)
        packed = p.slice(p.scratch, b.mul(p.index, c64(packed_floats)), packed_floats)
        emit_pack_transposed_taps(b, g, t, kernel, packed)
        img_lo, img_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, img_hi, start=img_lo, step=group, name="group") as n0:
            n1 = smin(b, b.add(n0, c64(group)), img_hi)
            fill_zero(b, dx, b.mul(n0, c64(image_floats)), b.mul(n1, c64(image_floats)), name="dx0")
            end = b.mul(n1, c64(pixels))
            with for_range(b, end, start=b.mul(n0, c64(pixels)), step=t.mr, name="tile") as r0:
                mr = smin(b, b.sub(end, r0), t.mr)
                windows = []
                for i in range(t.mr):
                    r = b.add(r0, smin(b, c64(i), b.sub(mr, c64(1))))
                    b.store(b.mul(r, c64(g.cout)), at_i64(b, rows, i))
                    n, pix = b.udiv(r, c64(pixels)), b.urem(r, c64(pixels))
                    oh, ow = b.udiv(pix, c64(g.out_w)), b.urem(pix, c64(g.out_w))
                    windows.append((b.mul(n, c64(g.in_h)), b.sub(b.mul(oh, c64(g.sh)), c64(g.pad_top)),
                                    b.sub(b.mul(ow, c64(g.sw)), c64(g.pad_left))))
                if bounds_checking():
                    _check_range(b, dy, b.mul(r0, c64(g.cout)), b.sub(b.mul(b.add(r0, mr), c64(g.cout)), c64(1)))
                with for_range(b, taps, name="tap") as tap:
                    ti, tj = b.udiv(tap, c64(g.kw)), b.urem(tap, c64(g.kw))
                    for i, (image_row, ih0, iw0) in enumerate(windows):
                        ih, iw = b.add(ih0, b.mul(ti, c64(g.dh))), b.add(iw0, b.mul(tj, c64(g.dw)))
                        valid = b.icmp_signed("<", c64(i), mr)
                        if not g.always_inside:
                            valid = b.and_(valid, b.and_(b.icmp_unsigned("<", ih, c64(g.in_h)),
                                                         b.icmp_unsigned("<", iw, c64(g.in_w))))
                        target = b.mul(b.add(b.mul(b.add(image_row, ih), c64(g.in_w)), iw), c64(g.cin))
                        b.store(b.select(valid, target, c64(-1)), at_i64(b, targets, i))
                        if bounds_checking():
                            with b.if_then(valid):
                                _check_range(b, dx, target, b.add(target, c64(g.cin - 1)))
                    bp = at(b, packed, b.mul(tap, c64(all_panels * panel_floats)))
                    if panels:
                        with for_range(b, panels, name="panel") as jp:
                            b.call(full_tile, [dy, rows, at(b, bp, b.mul(jp, c64(panel_floats))),
                                               at(b, dx, b.mul(jp, c64(t.nr))), targets])
                    if edge:
                        b.call(edge_tile, [dy, rows, at(b, bp, c64(panels * panel_floats)),
                                           at(b, dx, c64(panels * t.nr)), targets])
            if epilogue is not None:
                done = g.in_h * g.in_w
                epilogue.emit(b, [dx] + rest, b.mul(n0, c64(done)), b.mul(b.sub(n1, n0), c64(done)))

    run_parts(k, [dy, kernel, dx] + extra, nparts, body, scratch_floats=nparts * packed_floats)


def at_i64(b, ptr, index):
    return b.gep(ptr, [as_i64(index)], inbounds=True)


def emit_pack_transposed_taps(b, g, t, kernel, packed):
    """Each tap's K^T (Cout x Cin) into NR-wide panels of input channels for the input-gradient
    tile: packed[((tap * PANELS + p) * Cout + co) * NR + j] = kernel[tap, p * NR + j, co], zero
    past Cin."""
    all_panels = -(-g.cin // t.nr)
    with for_range(b, g.kh * g.kw, name="ptap") as tap:
        with for_range(b, all_panels, name="pp") as p:
            valid = smin(b, b.sub(c64(g.cin), b.mul(p, c64(t.nr))), t.nr)
            panel = b.mul(b.add(b.mul(tap, c64(all_panels)), p), c64(g.cout * t.nr))
            with for_range(b, g.cout, name="pco") as co:
                dst = b.add(panel, b.mul(co, c64(t.nr)))
                src = b.add(b.mul(b.add(b.mul(tap, c64(g.cin)), b.mul(p, c64(t.nr))), c64(g.cout)), co)
                with for_range(b, valid, name="pj") as j:
                    store_f32(b, load_f32(b, kernel, b.add(src, b.mul(j, c64(g.cout)))), packed, b.add(dst, j))
                fill_zero(b, packed, b.add(dst, valid), b.add(dst, c64(t.nr)), name="pz")


@lowering("llvm", "conv2d_backward_kernel")
def lower_conv2d_backward_kernel(k, attrs=None, bias=None, dy_source=None):
    """dK as tiles of rows (tap, channel) x columns (output channels), each summed over output
    pixels. The pixels go through in blocks (output rows of one image, or whole images) whose
    input and dy stay in the L1 cache while every tile of the part adds their products.

    The parts split the batch (each sums every tile over its images; part 0 into dK, the
    others into partial sums that are added to dK after the join) when those partial sums
    are small against the input and dy each part would otherwise read: split by tiles, every
    part reads all of them. On W3's first convolution (dK 27x32, dy 7.4 MB) the tile split
    ran 1.1x faster on two cores than on one, memory-bound; the merge adds 864 floats.

    ``bias`` (fused_bias_grad): also the sum of dy's rows, into that output: the tiles of the
    first rows of dK add up each pixel block's dy columns while the block is in L1.

    ``dy_source`` (epilogue.DyProducer): dy is not an operand; before each block of images the
    part computes their dy into its scratch memory (where it stays in cache), and the tiles
    and the bias sums read it there."""
    x, dy = k.inputs[0], (k.inputs[1] if dy_source is None else None)
    dk = k.outputs[0]
    g = conv_geometry("conv2d_backward_kernel", k.in_types[0].shape, k.out_types[0].shape, attrs or k.attrs)
    if g.pointwise:  # (fusion gives a 1x1 convolution no dy_source: passes/fusion.py)
        k.call_gemm(True, False, g.cin, g.cout, g.rows, x, g.cin, dy, g.cout, dk, g.cout)
        if bias is not None:
            fill_zero(k.b, bias, 0, g.cout, name="db0")
            add_rows(k.b, bias, dy, 0, g.rows, 0, g.cout, g.cout)
        return
    from .winograd import lower_winograd_conv2d_gradients, winograd_algorithm
    algorithm = winograd_algorithm(g) if dy_source is None else None
    if algorithm is not None:
        lower_winograd_conv2d_gradients(k, g, algorithm, dy, kernel_grad=(x, dk, bias))
        return
    t = host_tile()
    image, padded = image_layout(g)
    panels, edge = divmod(g.cout, t.nr)
    tiles_of = {nr: emit_weight_gradient_tile(k.module, g, image, t, nr) for nr in {t.nr if panels else 0, edge} if nr}
    row_tiles = -(-g.width // t.mr)
    tiles = row_tiles * (panels + bool(edge))
    dk_floats = g.width * g.cout
    block_images, block_rows = pixel_blocks(g, image)
    group = max(block_images, GROUP_BUDGET_FLOATS // image.floats // block_images * block_images) if padded \
        else g.batch
    pad_floats = _aligned(group * image.floats) if padded else 0
    nparts = parts_for(g.rows * g.width * g.cout, max(tiles, g.batch))
    split_batch = split_by_batch(g, nparts)
    if not split_batch:
        nparts = min(nparts, tiles)
    bias_floats = g.cout if bias is not None else 0
    partial_floats = _aligned(dk_floats + bias_floats) if split_batch else 0
    dy_image = g.out_h * g.out_w * g.cout
    dy_floats = _aligned(block_images * dy_image) if dy_source is not None else 0
    own_floats = pad_floats + partial_floats + dy_floats

    def body(p):
        b = p.b
        x, dy, dk = p.buffers[:3] if dy_source is None else (p.buffers[0], None, p.buffers[1])
        rest = p.buffers[3:] if dy_source is None else p.buffers[2:]
        db = rest[0] if bias is not None else None
        sources = rest[1:] if bias is not None else rest  # the dy producer's operands
        own = p.slice(p.scratch, b.mul(p.index, c64(own_floats)), own_floats)
        pad = p.slice(own, c64(0), pad_floats) if padded else None
        dy_block = p.slice(own, c64(pad_floats + partial_floats), dy_floats) if dy_source is not None else None
        if split_batch:
            lo, hi = c64(0), c64(tiles)
            img_lo, img_hi = split(b, p.index, p.count, g.batch, 1)
            first = b.icmp_signed("==", p.index, c64(0))
            acc = p.buffer(b.select(first, dk, p.slice(own, c64(pad_floats), dk_floats)), dk_floats)
            if bias is not None:
                db = p.buffer(b.select(first, db, p.slice(own, c64(pad_floats + dk_floats), bias_floats)),
                              bias_floats)
        else:
            lo, hi = split(b, p.index, p.count, tiles, 1)
            img_lo, img_hi, acc = c64(0), c64(g.batch), dk
        with for_range(b, img_hi, start=img_lo, step=group, name="group") as g0:
            g1 = smin(b, b.add(g0, c64(group)), img_hi)
            if padded:
                emit_pad(b, g, image, x, g0, g1, pad)
            with for_range(b, g1, start=g0, step=block_images, name="images") as n0:
                n1 = smin(b, b.add(n0, c64(block_images)), g1)
                x0 = at(b, pad, b.mul(b.sub(n0, g0), c64(image.floats))) if padded \
                    else at(b, x, b.mul(n0, c64(image.floats)))
                if dy_source is not None:
                    dy_source.emit(b, sources, n0, n1, dy_block, p.status)
                with for_range(b, g.out_h, step=block_rows, name="rows") as oh0:
                    nrows = smin(b, b.sub(c64(g.out_h), oh0), block_rows)
                    # the part's first block stores, the others add
                    add = b.or_(b.icmp_signed(">", n0, img_lo), b.icmp_signed(">", oh0, c64(0)))
                    weight_gradient_tiles(b, g, image, t, tiles_of, lo, hi, row_tiles, panels, edge, x0, n0, n1,
                                          oh0, nrows, dy if dy_source is None else dy_block, acc, add,
                                          (pad, b.mul(b.sub(n0, g0), c64(image.floats))) if padded
                                          else (x, b.mul(n0, c64(image.floats))), db,
                                          dy_image0=c64(0) if dy_source is None else n0)

    def merge(b, scratch):
        for i in range(1, nparts):
            partial = at(b, scratch, c64(i * own_floats + pad_floats))
            add_rows(b, dk, partial, 0, 1, 0, dk_floats, 0)
            if bias is not None:
                add_rows(b, bias, at(b, partial, c64(dk_floats)), 0, 1, 0, g.cout, 0)

    inputs = [x, dy] if dy_source is None else [x]
    run_parts(k, inputs + [dk] + ([bias] if bias is not None else []) + (dy_source.pointers if dy_source else []),
              nparts, body, scratch_floats=nparts * own_floats, after=merge if split_batch else None)


def add_rows(b, dst, src, first, count, lo, hi, row_floats):
    """dst[c] += src[r * row_floats + c] for rows r in [first, first + count), columns c in
    [lo, hi) (i64 values or ints); dst and src never overlap.

    A function of its own (inlined) whose pointers are ``noalias``: a part's dst and src may both
    be slices of the scratch buffer (a weight gradient's partial bias sums and the dy it
    computes), and without it LLVM kept every column scalar and stored it back per row (W3's
    first weight gradient on two cores: 930 -> 760 us). Bounds-checked builds check each access
    against the buffers the caller registered, in line."""
    args = [as_i64(first), as_i64(count), as_i64(lo), as_i64(hi), c64(row_floats)]
    if bounds_checking():
        _add_rows_loop(b, dst, src, *args)
        return
    fn = b.module.globals.get("conv.add_rows")
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(ir.VoidType(), [f32.as_pointer()] * 2 + [i64] * 5),
                         name="conv.add_rows")
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        vector_width_attrs(fn)
        for a in fn.args[:2]:
            a.add_attribute("noalias")
        fb = ir.IRBuilder(fn.append_basic_block("entry"))
        _add_rows_loop(fb, *fn.args)
        fb.ret_void()
    b.call(fn, [dst, src] + args)


def _add_rows_loop(b, dst, src, first, count, lo, hi, row_floats):
    with for_range(b, b.add(first, count), start=first, name="ar") as r:
        row = b.mul(r, row_floats)
        with for_range(b, hi, start=lo, name="ac") as c:
            store_f32(b, b.fadd(load_f32(b, dst, c), load_f32(b, src, b.add(row, c))), dst, c)


def split_by_batch(g, nparts):
    """Whether the weight gradient's parts split the batch (partial sums to merge: (nparts - 1)
    dK) rather than the tiles (every part reads all of x and dy)."""
    dk_floats = g.width * g.cout
    return (nparts > 1 and g.batch >= nparts
            and (nparts - 1) * dk_floats * 2 < g.batch * (g.in_h * g.in_w * g.cin + g.out_h * g.out_w * g.cout))


def pixel_blocks(g, image):
    """(images, output rows) of one block of the weight gradient: the input rows its windows
    read and its dy rows fit ``BLOCK_FLOATS``; whole images when one image's fit."""
    halo = max(0, ((g.kh - 1) * g.dh + 1 - g.sh) * image.width * image.cin)
    per_row = g.sh * image.width * image.cin + g.out_w * g.cout
    rows = max(1, (BLOCK_FLOATS - halo) // per_row)
    if rows < g.out_h:
        return 1, rows
    return max(1, min(g.batch, BLOCK_FLOATS // (image.floats + g.out_h * g.out_w * g.cout))), g.out_h


def weight_gradient_tiles(b, g, image, t, tiles_of, lo, hi, row_tiles, panels, edge, x0, n0, n1, oh0, nrows,
                          dy, dk, add, checked_x, db=None, dy_image0=None):
    """Tiles [lo, hi) of dK (panel-major) summed over output rows [oh0, oh0 + nrows) of images
    [n0, n1); ``checked_x``: (buffer, offset) of x0, for bounds-checked builds. With ``db``, a
    tile of dK's first rows also sums its panel's columns of those dy rows into db. ``dy``
    holds images from ``dy_image0`` (i64; all of dy: 0) on."""
    dn0, dn1 = (n0, n1) if dy_image0 is None else (b.sub(n0, dy_image0), b.sub(n1, dy_image0))
    dy0 = at(b, dy, b.add(b.mul(dn0, c64(g.out_h * g.out_w * g.cout)), b.mul(oh0, c64(g.out_w * g.cout))))
    x0 = at(b, x0, b.mul(oh0, c64(g.sh * image.width * image.cin)))
    with for_range(b, hi, start=lo, name="tile") as tid:
        panel, m0 = b.udiv(tid, c64(row_tiles)), b.mul(b.urem(tid, c64(row_tiles)), c64(t.mr))
        mr = smin(b, b.sub(c64(g.width), m0), t.mr)
        c = at(b, dk, b.add(b.mul(m0, c64(g.cout)), b.mul(panel, c64(t.nr))))

        def call(nr):
            if bounds_checking():
                check_weight_gradient_tile(b, g, image, t, checked_x, dy, dn0, dn1, oh0, nrows, m0, mr, dk, panel, nr)
            b.call(tiles_of[nr], [x0, at(b, dy0, b.mul(panel, c64(t.nr))), b.sub(n1, n0), nrows, m0, mr, c, add])

        if panels and edge:
            with b.if_else(b.icmp_signed("<", panel, c64(panels))) as (full, last):
                with full:
                    call(t.nr)
                with last:
                    call(edge)
        else:
            call(t.nr if panels else edge)
        if db is not None:
            with b.if_then(b.icmp_signed("==", m0, c64(0))):
                col_lo = b.mul(panel, c64(t.nr))
                col_hi = smin(b, b.add(col_lo, c64(t.nr)), g.cout)
                with b.if_then(b.not_(add)):
                    fill_zero(b, db, col_lo, col_hi, name="db0")
                pixels = g.out_h * g.out_w
                with for_range(b, dn1, start=dn0, name="bn") as n:
                    first = b.add(b.mul(n, c64(pixels)), b.mul(oh0, c64(g.out_w)))
                    add_rows(b, db, dy, first, b.mul(nrows, c64(g.out_w)), col_lo, col_hi, g.cout)
