"""conv2d of a 3x3 kernel with stride 1 by Winograd's minimal filtering F(2x2, 3x3) (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).

A 2x2 tile of output pixels is ``A^T [(G g G^T) * (B^T d B)] A`` for the 4x4 input patch d
under it and each 3x3 filter g (``*`` element by element). Summed over the input channels the
16 element-wise products of a tile become 16 matrix products, one per position xi of the 4x4
transformed tile:

    M[xi] (tiles x Cout) = V[xi] (tiles x Cin) @ U[xi] (Cin x Cout)
    V[xi] = B^T d B at xi, tile by tile;  U[xi] = G g G^T at xi;  y tile = A^T M A

16 multiply-adds per tile and channel pair where the direct convolution takes 36: 2.25x fewer
(fewer still saved where the tiles overhang an odd output size; ``products_ratio``).

The parts (cores) own whole images. Each part transforms the filters into U once per call,
already packed in the forward tile's NR-wide panels. Then, image by image: a zero-padded copy
of the image covering every tile's patch, and per block of tile rows the input transform into
V, the 16 products by the implicit-GEMM forward tile (conv_tiles.py, reading V as the image
of a 1x1 convolution), the output transform into y, and the conv2d lowering's epilogue and
pooling on the block's output rows while they are in cache. A block's output rows are whole
rows of pixels: two per tile row.

The transforms run on vectors of consecutive channels; a bounds-checked build does them one
checked float at a time and checks the first and last element of each tile call.
"""
import dataclasses

import llvmlite.ir as ir

from .conv import (_aligned, _check_range, add_rows, at, emit_pad, fill_zero, load_f32, parts_for, run_parts, smin,
                   split, store_f32)
from .conv_tiles import Image, emit_forward_tile, emit_weight_gradient_tile, forward_tile, host_tile
from .gemm import _vload, _vstore
from .irutil import bounds_checking, c64, f32, for_range, generation_options, i64, register_buffer

# Tiles one block transforms, multiplies and finishes while they are in cache (rounded up to
# whole tile rows): V and M of 24 tiles of W3's second convolution take 16 * 24 * (32 + 64)
# floats, 147 KiB, in L2.
BLOCK_TILES = 24
# Tiles of a block of the weight gradient: the depth of its products (the tile's accumulators are
# loaded and stored once per block)
WEIGHT_BLOCK_TILES = 48
# ``auto`` takes Winograd where both channel counts reach this (fewer input channels make the
# 16 products too short for the register tile, and the transforms cost more than they save)
MIN_CHANNELS = 16
# and where its products are at most this fraction of the direct convolution's (tiles
# overhanging a small odd output: W2's third convolution, 3x3 outputs on 2x2 tiles, 0.79)
MAX_PRODUCTS_RATIO = 0.6


def tiles(g):
    """(tile rows, tile columns) covering the output."""
    return -(-g.out_h // 2), -(-g.out_w // 2)


def products_ratio(g):
    """Winograd's multiply-adds over the direct kernels' (9 per output pixel and channel pair)."""
    th, tw = tiles(g)
    return 16 * th * tw / (9 * g.out_h * g.out_w)


def winograd_applies(g):
    """Whether the convolution of geometry ``g`` (ops.conv.ConvGeometry) and its gradients run
    as F(2x2, 3x3) under the generation options' ``winograd`` mode (auto, on, off)."""
    mode = generation_options().winograd
    if mode == "off" or not (g.kh == g.kw == 3 and g.sh == g.sw == 1 and g.dh == g.dw == 1):
        return False
    return mode == "on" or (min(g.cin, g.cout) >= MIN_CHANNELS and products_ratio(g) <= MAX_PRODUCTS_RATIO)


def describe(mode):
    """The choice under ``mode`` (Options.winograd), for the dump's notes."""
    rule = {"auto": f"where both channel counts reach {MIN_CHANNELS} and it takes at most {MAX_PRODUCTS_RATIO} of "
                    "the direct kernel's multiply-adds",
            "on": "wherever the geometry allows", "off": "never: direct kernels only"}[mode]
    return f"cpu conv2d and its input gradient, 3x3 stride 1: Winograd F(2x2, 3x3) {rule} (winograd={mode})"


# ---- the three transforms, on values (floats or vectors) --------------------------------------

def _input_1d(b, d):     # B^T d
    return [b.fsub(d[0], d[2]), b.fadd(d[1], d[2]), b.fsub(d[2], d[1]), b.fsub(d[1], d[3])]


def _filter_1d(b, g, half):  # G g
    outer = b.fadd(g[0], g[2])
    return [g[0], b.fmul(b.fadd(outer, g[1]), half), b.fmul(b.fsub(outer, g[1]), half), g[2]]


def _output_1d(b, m):    # A^T m
    return [b.fadd(b.fadd(m[0], m[1]), m[2]), b.fsub(b.fsub(m[1], m[2]), m[3])]


def _both_sides(b, f, square):
    """f applied to the columns of ``square`` (a list of rows), then to the rows of the result:
    X^T s X for f = (s -> X^T s)."""
    columns = [f(b, [row[j] for row in square]) for j in range(len(square[0]))]
    return [f(b, [column[i] for column in columns]) for i in range(len(columns[0]))]


class Lanes:
    """Loads and stores of ``width`` consecutive floats: a vector, or (width 1) one float through
    irutil's checked accesses."""

    def __init__(self, width):
        self.width = width

    def load(self, b, ptr, index):
        if self.width == 1:
            return load_f32(b, ptr, index)
        return _vload(b, at(b, ptr, index), 4, self.width)

    def store(self, b, value, ptr, index):
        if self.width == 1:
            store_f32(b, value, ptr, index)
        else:
            _vstore(b, value, at(b, ptr, index), 4)

    def constant(self, x):
        if self.width == 1:
            return ir.Constant(f32, x)
        return ir.Constant(ir.VectorType(f32, self.width), [x] * self.width)


def _lanes(count, width):
    """Vectors of ``width`` over ``count`` consecutive floats when they divide it (and the build
    is not bounds-checked), else single floats."""
    return Lanes(width if count % width == 0 and not bounds_checking() else 1)


def _gradient_1d(b, d):   # A d: a 2x2 tile of dy to the 4x4 positions
    return [d[0], b.fadd(d[0], d[1]), b.fsub(d[0], d[1]), b.fsub(ir.Constant(d[1].type, None), d[1])]


def _input_gradient_1d(b, m):  # B m: the 4x4 positions back to a 4x4 patch (the adjoint of B^T d)
    return [m[0], b.fadd(b.fsub(m[1], m[2]), m[3]), b.fsub(b.fadd(m[1], m[2]), m[0]),
            b.fsub(ir.Constant(m[3].type, None), m[3])]


def _kernel_gradient_1d(b, u, half):  # G^T u: the 4x4 positions back to 3 taps
    inner = b.fmul(b.fadd(u[1], u[2]), half)
    return [b.fadd(u[0], inner), b.fmul(b.fsub(u[1], u[2]), half), b.fadd(inner, u[3])]


# ---- the kernels ----------------------------------------------------------------------------------

def lower_winograd_conv2d(k, g, buffers, epilogue, pool):
    """conv2d of geometry ``g`` into y (``buffers``: x, kernel, y, then the epilogue's extra
    pointers), ``epilogue`` and ``pool`` as lower_conv2d takes them."""
    t = forward_tile(host_tile())
    th_n, tw_n = tiles(g)
    block_rows = max(1, min(th_n, -(-BLOCK_TILES // tw_n)))  # tile rows per block
    tb = block_rows * tw_n                                     # tiles per block, at most
    full, edge = divmod(g.cout, t.nr)
    panels = full + bool(edge)
    pixels = g.out_h * g.out_w
    padded = Image(2 * tw_n + 2, g.cin, (2 * th_n + 2) * (2 * tw_n + 2) * g.cin)
    in_scratch = pool is not None and not pool.store_input  # y of one image at a time, in scratch
    sizes = {"u": _aligned(16 * panels * t.nr * g.cin), "pad": _aligned(padded.floats),
             "v": _aligned(16 * tb * g.cin), "m": _aligned(16 * tb * g.cout),
             "y": _aligned(pixels * g.cout) if in_scratch else 0}
    own_floats = sum(sizes.values())
    # the forward tile as a 1x1 convolution over V: tile row i reads V[xi][origins[i] + c], c < Cin
    pointwise = dataclasses.replace(g, kh=1, kw=1, pad_top=0, pad_left=0)
    v_image = Image(1, g.cin, tb * g.cin)
    full_tile = emit_forward_tile(k.module, pointwise, v_image, t, t.nr) if full else None
    edge_tile = emit_forward_tile(k.module, pointwise, v_image, t, edge) if edge else None
    cin_lanes, cout_lanes, panel_lanes = _lanes(g.cin, t.vw), _lanes(g.cout, t.vw), _lanes(t.nr, t.vw)
    nparts = parts_for(16 * g.batch * th_n * tw_n * g.cin * g.cout, g.batch)

    def body(p):
        b, (x, kernel, y), rest = p.b, p.buffers[:3], p.buffers[3:]
        with b.goto_entry_block():
            origins = b.alloca(ir.ArrayType(i64, t.mr))
        origins = b.bitcast(origins, i64.as_pointer())
        offset = b.mul(p.index, c64(own_floats))
        scratch = {}
        for name, floats in sizes.items():
            if floats:
                scratch[name] = p.slice(p.scratch, offset, floats)
                offset = b.add(offset, c64(floats))
        u, pad, v, m = scratch["u"], scratch["pad"], scratch["v"], scratch["m"]
        if in_scratch:
            y = scratch["y"]
        emit_filter_transform(b, g, t, kernel, u, panel_lanes)
        n_lo, n_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, n_hi, start=n_lo, name="wimage") as n:
            emit_pad(b, g, padded, x, n, b.add(n, c64(1)), pad)
            y_image = c64(0) if in_scratch else b.mul(n, c64(pixels))  # the image's first row in y
            with for_range(b, th_n, step=block_rows, name="wblock") as tr0:
                tr1 = smin(b, b.add(tr0, c64(block_rows)), th_n)
                count = b.mul(b.sub(tr1, tr0), c64(tw_n))
                emit_input_transform(b, g, padded, pad, v, tb, tr0, tr1, cin_lanes)
                emit_products(b, g, t, (full_tile, edge_tile), v, u, m, tb, count, origins)
                emit_output_transform(b, g, m, y, y_image, tb, tr0, tr1, cout_lanes)
                first = b.mul(tr0, c64(2 * g.out_w))
                end = smin(b, b.mul(tr1, c64(2 * g.out_w)), pixels)
                if epilogue is not None:
                    epilogue.emit(b, [y] + rest, b.add(y_image, first), b.sub(end, first))
                if pool is not None:
                    pool.emit(b, [y] + rest, n, first, end, source_image=c64(0) if in_scratch else None)

    run_parts(k, buffers, nparts, body, scratch_floats=nparts * own_floats)


def emit_transpose(b, g, kernel, kt):
    """kt[a, b, o, c] = kernel[a, b, c, o]: the HWIO kernel (3, 3, Cin, Cout) of ``g`` with its
    channel axes swapped."""
    with for_range(b, 9, name="ttap") as tap:
        with for_range(b, g.cin, name="tc") as c:
            src = b.mul(b.add(b.mul(tap, c64(g.cin)), c), c64(g.cout))
            with for_range(b, g.cout, name="to") as o:
                dst = b.add(b.mul(b.add(b.mul(tap, c64(g.cout)), o), c64(g.cin)), c)
                store_f32(b, load_f32(b, kernel, b.add(src, o)), kt, dst)


def emit_filter_transform(b, g, t, kernel, u, lanes):
    """u[((xi * panels + p) * Cin + c) * NR + j] = (G g G^T)[xi] of filter (c, o = p * NR + j) of
    the HWIO kernel; zero for o past Cout (the forward tile's packed panels, one set per xi)."""
    full, edge = divmod(g.cout, t.nr)
    panels = full + bool(edge)
    half = lanes.constant(0.5)

    def transform(c, o, j, p, lanes, half):
        taps = [[lanes.load(b, kernel, b.add(b.mul(c64((i * 3 + jj) * g.cin), c64(g.cout)),
                                               b.add(b.mul(c, c64(g.cout)), o)))
                 for jj in range(3)] for i in range(3)]
        square = _both_sides(b, lambda b, s: _filter_1d(b, s, half), taps)
        for xi in range(16):
            index = b.add(b.mul(b.add(b.mul(c64(xi * panels), c64(g.cin)), b.add(b.mul(p, c64(g.cin)), c)),
                                c64(t.nr)), j)
            lanes.store(b, square[xi // 4][xi % 4], u, index)

    with for_range(b, g.cin, name="fc") as c:
        if full:
            with for_range(b, full, name="fp") as p:
                with for_range(b, t.nr, step=lanes.width, name="fj") as j:
                    transform(c, b.add(b.mul(p, c64(t.nr)), j), j, p, lanes, half)
        if edge:
            one = Lanes(1)
            with for_range(b, edge, name="fe") as j:
                transform(c, b.add(c64(full * t.nr), j), j, c64(full), one, one.constant(0.5))
            with for_range(b, t.nr, start=edge, name="fz") as j:
                for xi in range(16):
                    index = b.add(b.mul(b.add(c64((xi * panels + full) * g.cin), c), c64(t.nr)), j)
                    store_f32(b, ir.Constant(f32, 0.0), u, index)


def emit_input_transform(b, g, padded, pad, v, tb, tr0, tr1, lanes):
    """v[(xi * tb + tile) * Cin + c] = (B^T d B)[xi] of the tiles of tile rows [tr0, tr1) (tile =
    (row - tr0) * tile columns + column), d their 4x4 patches of the padded image."""
    _, tw_n = tiles(g)
    row = padded.width * g.cin
    with for_range(b, tr1, start=tr0, name="vi") as th:
        with for_range(b, tw_n, name="vj") as tw:
            tile = b.add(b.mul(b.sub(th, tr0), c64(tw_n)), tw)
            origin = b.add(b.mul(th, c64(2 * row)), b.mul(tw, c64(2 * g.cin)))
            with for_range(b, g.cin, step=lanes.width, name="vc") as c:
                base = b.add(origin, c)
                patch = [[lanes.load(b, pad, b.add(base, c64(i * row + j * g.cin))) for j in range(4)]
                         for i in range(4)]
                square = _both_sides(b, _input_1d, patch)
                for xi in range(16):
                    lanes.store(b, square[xi // 4][xi % 4], v,
                                b.add(b.mul(b.add(c64(xi * tb), tile), c64(g.cin)), c))


def emit_products(b, g, t, tile_functions, v, u, m, tb, count, origins):
    """m[(xi * tb + tile) * Cout + o] = sum_c v[(xi * tb + tile) * Cin + c] * U[xi][c, o] for the
    ``count`` tiles of the block, MR tiles and one NR-wide panel per forward tile call (rows past
    the last tile repeat it)."""
    full_tile, edge_tile = tile_functions
    full, edge = divmod(g.cout, t.nr)
    panels = full + bool(edge)
    checked = bounds_checking()
    with for_range(b, 16, name="xi") as xi:
        v_xi = b.mul(xi, c64(tb * g.cin))
        u_xi = b.mul(xi, c64(panels * t.nr * g.cin))
        m_xi = b.mul(xi, c64(tb * g.cout))
        with for_range(b, count, step=t.mr, name="wtile") as r0:
            mr = smin(b, b.sub(count, r0), t.mr)
            for i in range(t.mr):
                row = b.add(r0, smin(b, c64(i), b.sub(mr, c64(1))))
                b.store(b.mul(row, c64(g.cin)), b.gep(origins, [c64(i)], inbounds=True))
            last = b.add(r0, b.sub(mr, c64(1)))
            if checked:
                _check_range(b, v, b.add(v_xi, b.mul(r0, c64(g.cin))),
                             b.add(v_xi, b.add(b.mul(last, c64(g.cin)), c64(g.cin - 1))))
            for p, fn, nr in [(j, full_tile, t.nr) for j in range(full)] + ([(full, edge_tile, edge)] if edge else []):
                bp = b.add(u_xi, c64(p * t.nr * g.cin))
                c = b.add(m_xi, b.add(b.mul(r0, c64(g.cout)), c64(p * t.nr)))
                if checked:
                    _check_range(b, u, bp, b.add(bp, c64(t.nr * g.cin - 1)))
                    _check_range(b, m, c, b.add(m_xi, b.add(b.mul(last, c64(g.cout)), c64(p * t.nr + nr - 1))))
                b.call(fn, [at(b, v, v_xi), origins, mr, at(b, u, bp), at(b, m, c)])


def emit_output_transform(b, g, m, y, y_image, tb, tr0, tr1, lanes):
    """The 2x2 output tiles (A^T M A) of tile rows [tr0, tr1) into y (rows Cout apart, the
    image's pixel 0 at row ``y_image``), dropping the pixels past an odd output's edge."""
    th_n, tw_n = tiles(g)
    with for_range(b, tr1, start=tr0, name="yi") as th:
        with for_range(b, tw_n, name="yj") as tw:
            tile = b.add(b.mul(b.sub(th, tr0), c64(tw_n)), tw)
            # the second row (column) of the last tile row (column) of an odd output is dropped
            inside = [None, b.icmp_signed("<", th, c64(th_n - 1)) if g.out_h % 2 else None]
            inside_w = [None, b.icmp_signed("<", tw, c64(tw_n - 1)) if g.out_w % 2 else None]
            first_pixel = b.add(y_image, b.add(b.mul(th, c64(2 * g.out_w)), b.mul(tw, c64(2))))
            with for_range(b, g.cout, step=lanes.width, name="yo") as o:
                square = [[lanes.load(b, m, b.add(b.mul(b.add(c64((i * 4 + j) * tb), tile), c64(g.cout)), o))
                           for j in range(4)] for i in range(4)]
                out = _both_sides(b, _output_1d, square)
                for i in range(2):
                    for j in range(2):
                        conditions = [c for c in (inside[i], inside_w[j]) if c is not None]
                        index = b.add(b.mul(b.add(first_pixel, c64(i * g.out_w + j)), c64(g.cout)), o)
                        if not conditions:
                            lanes.store(b, out[i][j], y, index)
                            continue
                        condition = conditions[0] if len(conditions) == 1 else b.and_(*conditions)
                        with b.if_then(condition):
                            lanes.store(b, out[i][j], y, index)


def lower_winograd_conv2d_backward_kernel(k, g, buffers, bias):
    """conv2d_backward_kernel of geometry ``g``: ``buffers`` x, dy, dk (and the bias gradient
    when ``bias``, fused_bias_grad). The gradient of F(2x2, 3x3) with respect to U:

        dU[xi] (Cin x Cout) = sum over tiles of V[xi]^T (Cin x tiles) @ D[xi] (tiles x Cout)
        D = A dy A^T of each 2x2 tile of dy (zero past the output's edge);  dK = G^T dU G

    The parts split the batch; each sums its images' tiles into a dU (and a bias sum) of its
    own, with the weight-gradient tile of a 1x1 convolution over V and D (conv_tiles.py), a
    block of tile rows at a time; after the join the calling thread adds the parts' dU and
    transforms the sum into dK."""
    t = host_tile()
    th_n, tw_n = tiles(g)
    block_rows = max(1, min(th_n, -(-WEIGHT_BLOCK_TILES // tw_n)))
    tb = block_rows * tw_n
    full, edge = divmod(g.cout, t.nr)
    row_tiles = -(-g.cin // t.mr)
    padded = Image(2 * tw_n + 2, g.cin, (2 * th_n + 2) * (2 * tw_n + 2) * g.cin)
    du_floats = 16 * g.cin * g.cout
    sizes = {"du": _aligned(du_floats), "db": _aligned(g.cout) if bias else 0, "pad": _aligned(padded.floats),
             "v": _aligned(16 * tb * g.cin), "d": _aligned(16 * tb * g.cout)}
    own_floats = sum(sizes.values())
    # the weight-gradient tile of a 1x1 convolution whose image is V[xi] (rows of tw_n tiles of
    # Cin floats) and whose dy is D[xi] (Cout floats per tile)
    pointwise = dataclasses.replace(g, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1, pad_top=0, pad_left=0,
                                    out_h=block_rows, out_w=tw_n)
    v_image = Image(tw_n, g.cin, tb * g.cin)
    tile_of = {nr: emit_weight_gradient_tile(k.module, pointwise, v_image, t, nr) for nr in {t.nr if full else 0, edge} if nr}
    cin_lanes, cout_lanes = _lanes(g.cin, t.vw), _lanes(g.cout, t.vw)
    nparts = parts_for(16 * g.batch * th_n * tw_n * g.cin * g.cout, g.batch)
    dk, bias_out = buffers[2], (buffers[3] if bias else None)

    def body(p):
        b, (x, dy, dk) = p.b, p.buffers[:3]
        offset = b.mul(p.index, c64(own_floats))
        scratch = {}
        for name, floats in sizes.items():
            if floats:
                scratch[name] = p.slice(p.scratch, offset, floats)
                offset = b.add(offset, c64(floats))
        du, pad, v, d = scratch["du"], scratch["pad"], scratch["v"], scratch["d"]
        fill_zero(b, du, 0, du_floats, name="du0")
        if bias:
            fill_zero(b, scratch["db"], 0, g.cout, name="db0")
        n_lo, n_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, n_hi, start=n_lo, name="wimage") as n:
            emit_pad(b, g, padded, x, n, b.add(n, c64(1)), pad)
            with for_range(b, th_n, step=block_rows, name="wblock") as tr0:
                tr1 = smin(b, b.add(tr0, c64(block_rows)), th_n)
                emit_input_transform(b, g, padded, pad, v, tb, tr0, tr1, cin_lanes)
                emit_dy_transform(b, g, dy, n, d, tb, tr0, tr1, cout_lanes)
                emit_kernel_gradient_products(b, g, t, tile_of, v, d, du, tb, b.sub(tr1, tr0), row_tiles)
                if bias:
                    first = b.add(b.mul(n, c64(g.out_h * g.out_w)), b.mul(tr0, c64(2 * g.out_w)))
                    end = smin(b, b.mul(tr1, c64(2)), g.out_h)
                    add_rows(b, scratch["db"], dy, first, b.mul(b.sub(end, b.mul(tr0, c64(2))), c64(g.out_w)),
                             0, g.cout, g.cout)

    def finish(b, scratch_base):
        """dK = G^T (the parts' dU summed) G, and the bias gradient."""
        parts = [at(b, scratch_base, c64(i * own_floats)) for i in range(nparts)]
        if bounds_checking():
            for i in range(nparts):
                register_buffer(parts[i], own_floats, k.status)
        lanes = cout_lanes
        half = lanes.constant(0.5)
        with for_range(b, g.cin, name="kc") as c:
            with for_range(b, g.cout, step=lanes.width, name="ko") as o:
                at_xi = lambda xi: b.add(b.mul(b.add(c64(xi * g.cin), c), c64(g.cout)), o)  # noqa: E731
                square = []
                for i in range(4):
                    row = []
                    for j in range(4):
                        total = lanes.load(b, parts[0], at_xi(i * 4 + j))
                        for part in parts[1:]:
                            total = b.fadd(total, lanes.load(b, part, at_xi(i * 4 + j)))
                        row.append(total)
                    square.append(row)
                taps = _both_sides(b, lambda b, s: _kernel_gradient_1d(b, s, half), square)
                for i in range(3):
                    for j in range(3):
                        lanes.store(b, taps[i][j], dk, b.add(b.mul(b.add(c64((i * 3 + j) * g.cin), c), c64(g.cout)), o))
        if bias:
            db = c64(sizes["du"])
            fill_zero(b, bias_out, 0, g.cout, name="dbz")
            for part in parts:
                add_rows(b, bias_out, at(b, part, db), 0, 1, 0, g.cout, 0)

    run_parts(k, buffers, nparts, body, scratch_floats=nparts * own_floats, after=finish)


def emit_dy_transform(b, g, dy, n, d, tb, tr0, tr1, lanes):
    """d[(xi * tb + tile) * Cout + o] = (A dy A^T)[xi] of the 2x2 dy tiles of tile rows [tr0, tr1)
    of image n (pixels past the output's edge are zeros)."""
    th_n, tw_n = tiles(g)
    zero = lanes.constant(0.0)
    with for_range(b, tr1, start=tr0, name="di") as th:
        with for_range(b, tw_n, name="dj") as tw:
            tile = b.add(b.mul(b.sub(th, tr0), c64(tw_n)), tw)
            inside = [None, b.icmp_signed("<", th, c64(th_n - 1)) if g.out_h % 2 else None]
            inside_w = [None, b.icmp_signed("<", tw, c64(tw_n - 1)) if g.out_w % 2 else None]
            first_pixel = b.add(b.mul(n, c64(g.out_h * g.out_w)), b.add(b.mul(th, c64(2 * g.out_w)), b.mul(tw, c64(2))))
            with for_range(b, g.cout, step=lanes.width, name="do") as o:
                square = []
                for i in range(2):
                    row = []
                    for j in range(2):
                        index = b.add(b.mul(b.add(first_pixel, c64(i * g.out_w + j)), c64(g.cout)), o)
                        conditions = [c for c in (inside[i], inside_w[j]) if c is not None]
                        if not conditions:
                            row.append(lanes.load(b, dy, index))
                            continue
                        condition = conditions[0] if len(conditions) == 1 else b.and_(*conditions)
                        before = b.block
                        with b.if_then(condition) as _:
                            value = lanes.load(b, dy, index)
                            loaded = b.block
                        phi = b.phi(value.type)
                        phi.add_incoming(value, loaded)
                        phi.add_incoming(zero, before)
                        row.append(phi)
                    square.append(row)
                out = _both_sides(b, _gradient_1d, square)
                for xi in range(16):
                    lanes.store(b, out[xi // 4][xi % 4], d, b.add(b.mul(b.add(c64(xi * tb), tile), c64(g.cout)), o))


def emit_kernel_gradient_products(b, g, t, tile_of, v, d, du, tb, rows, row_tiles):
    """du[(xi * Cin + c) * Cout + o] += sum over the block's tiles (``rows`` tile rows) of
    v[xi][tile][c] * d[xi][tile][o]: tiles of MR channels x one NR-wide panel."""
    full, edge = divmod(g.cout, t.nr)
    with for_range(b, 16, name="gxi") as xi:
        v_xi, d_xi = b.mul(xi, c64(tb * g.cin)), b.mul(xi, c64(tb * g.cout))
        du_xi = b.mul(xi, c64(g.cin * g.cout))
        with for_range(b, row_tiles, name="gm") as mt:
            m0 = b.mul(mt, c64(t.mr))
            mr = smin(b, b.sub(c64(g.cin), m0), t.mr)
            for p, nr in [(j, t.nr) for j in range(full)] + ([(full, edge)] if edge else []):
                c = b.add(du_xi, b.add(b.mul(m0, c64(g.cout)), c64(p * t.nr)))
                if bounds_checking():
                    last_tile = b.sub(b.mul(rows, c64(tiles(g)[1])), c64(1))
                    _check_range(b, v, b.add(v_xi, m0), b.add(v_xi, b.add(b.mul(last_tile, c64(g.cin)),
                                                                          b.add(m0, b.sub(mr, c64(1))))))
                    _check_range(b, d, b.add(d_xi, c64(p * t.nr)),
                                 b.add(d_xi, b.add(b.mul(last_tile, c64(g.cout)), c64(p * t.nr + nr - 1))))
                    _check_range(b, du, c, b.add(c, b.add(b.mul(b.sub(mr, c64(1)), c64(g.cout)), c64(nr - 1))))
                b.call(tile_of[nr], [at(b, v, v_xi), at(b, d, b.add(d_xi, c64(p * t.nr))), c64(1), rows, m0, mr,
                                     at(b, du, c), ir.Constant(ir.IntType(1), 1)])


def lower_winograd_conv2d_backward_input(k, g, buffers, epilogue):
    """conv2d_backward_input of geometry ``g`` (the forward convolution's) into dx (``buffers``:
    dy, kernel, dx, then the epilogue's extra pointers): the adjoint of the forward algorithm,
    tile by tile of dy,

        M[xi] (tiles x Cin) = D[xi] (tiles x Cout) @ U[xi]^T (Cout x Cin),  D = A dy A^T
        the 4x4 input patch under the tile += B M B^T

    (the patches of neighbouring tiles overlap by two pixels). Each image's patches are summed
    into a zeroed image of the forward's padded frame in scratch memory; its inside is then
    copied to dx and finished by ``epilogue`` while in cache. Over the tiles of dy, the
    products are as few as the forward's: a 'valid' convolution's input gradient takes none
    for the padding around dy."""
    t = forward_tile(host_tile())
    th_n, tw_n = tiles(g)
    block_rows = max(1, min(th_n, -(-BLOCK_TILES // tw_n)))
    tb = block_rows * tw_n
    full, edge = divmod(g.cin, t.nr)
    panels = full + bool(edge)
    frame = Image(2 * tw_n + 2, g.cin, (2 * th_n + 2) * (2 * tw_n + 2) * g.cin)  # the forward's padded image
    pixels = g.in_h * g.in_w
    sizes = {"kt": _aligned(9 * g.cin * g.cout), "u": _aligned(16 * panels * t.nr * g.cout),
             "acc": _aligned(frame.floats), "d": _aligned(16 * tb * g.cout), "m": _aligned(16 * tb * g.cin)}
    own_floats = sum(sizes.values())
    # the products' geometry: Cout deep, Cin wide
    swapped = dataclasses.replace(g, cin=g.cout, cout=g.cin)
    pointwise = dataclasses.replace(swapped, kh=1, kw=1, pad_top=0, pad_left=0)
    d_image = Image(1, g.cout, tb * g.cout)
    tile_functions = (emit_forward_tile(k.module, pointwise, d_image, t, t.nr) if full else None,
                      emit_forward_tile(k.module, pointwise, d_image, t, edge) if edge else None)
    cin_lanes, cout_lanes, panel_lanes = _lanes(g.cin, t.vw), _lanes(g.cout, t.vw), _lanes(t.nr, t.vw)
    nparts = parts_for(16 * g.batch * th_n * tw_n * g.cin * g.cout, g.batch)

    def body(p):
        b, (dy, kernel, dx), rest = p.b, p.buffers[:3], p.buffers[3:]
        with b.goto_entry_block():
            origins = b.alloca(ir.ArrayType(i64, t.mr))
        origins = b.bitcast(origins, i64.as_pointer())
        offset = b.mul(p.index, c64(own_floats))
        scratch = {}
        for name, floats in sizes.items():
            scratch[name] = p.slice(p.scratch, offset, floats)
            offset = b.add(offset, c64(floats))
        kt, u, acc, d, m = (scratch[name] for name in ("kt", "u", "acc", "d", "m"))
        emit_transpose(b, g, kernel, kt)
        emit_filter_transform(b, swapped, t, kt, u, panel_lanes)
        n_lo, n_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, n_hi, start=n_lo, name="wimage") as n:
            fill_zero(b, acc, 0, frame.floats, name="acc0")
            with for_range(b, th_n, step=block_rows, name="wblock") as tr0:
                tr1 = smin(b, b.add(tr0, c64(block_rows)), th_n)
                count = b.mul(b.sub(tr1, tr0), c64(tw_n))
                emit_dy_transform(b, g, dy, n, d, tb, tr0, tr1, cout_lanes)
                emit_products(b, swapped, t, tile_functions, d, u, m, tb, count, origins)
                emit_patch_sums(b, g, frame, m, acc, tb, tr0, tr1, cin_lanes)
            emit_unpad(b, g, frame, acc, dx, n)
            if epilogue is not None:
                epilogue.emit(b, [dx] + rest, b.mul(n, c64(pixels)), pixels)

    run_parts(k, buffers, nparts, body, scratch_floats=nparts * own_floats)


def emit_patch_sums(b, g, frame, m, acc, tb, tr0, tr1, lanes):
    """acc (the padded frame of one image) += B M B^T of the tiles of tile rows [tr0, tr1), each
    4x4 patch where the forward's input patch of that tile lies."""
    _, tw_n = tiles(g)
    row = frame.width * g.cin
    with for_range(b, tr1, start=tr0, name="pi") as th:
        with for_range(b, tw_n, name="pj") as tw:
            tile = b.add(b.mul(b.sub(th, tr0), c64(tw_n)), tw)
            origin = b.add(b.mul(th, c64(2 * row)), b.mul(tw, c64(2 * g.cin)))
            with for_range(b, g.cin, step=lanes.width, name="pc") as c:
                square = [[lanes.load(b, m, b.add(b.mul(b.add(c64((i * 4 + j) * tb), tile), c64(g.cin)), c))
                           for j in range(4)] for i in range(4)]
                patch = _both_sides(b, _input_gradient_1d, square)
                base = b.add(origin, c)
                for i in range(4):
                    for j in range(4):
                        index = b.add(base, c64(i * row + j * g.cin))
                        lanes.store(b, b.fadd(lanes.load(b, acc, index), patch[i][j]), acc, index)


def emit_unpad(b, g, frame, acc, dx, n):
    """Image n of dx: the inside of the padded frame ``acc`` (frame row ih + pad_top, column
    iw + pad_left holds dx pixel (ih, iw))."""
    row = g.in_w * g.cin
    with for_range(b, g.in_h, name="uh") as ih:
        src = b.add(b.mul(b.add(ih, c64(g.pad_top)), c64(frame.width * g.cin)), c64(g.pad_left * g.cin))
        dst = b.add(b.mul(n, c64(g.in_h * row)), b.mul(ih, c64(row)))
        with for_range(b, row, name="ue") as e:
            store_f32(b, load_f32(b, acc, b.add(src, e)), dx, b.add(dst, e))
