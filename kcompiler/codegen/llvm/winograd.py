"""conv2d of a 3x3 kernel with stride 1 and both of its gradients by Winograd's minimal
filtering F(m x m, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016), for output tiles of m = 2 or 4 pixels a side.

An m x m tile of output pixels is ``A^T [(G g G^T) * (B^T d B)] A`` for the a x a input patch
d under it (a = m + 2) and each 3x3 filter g (``*`` element by element). Summed over the input
channels the a^2 element-wise products of a tile become a^2 matrix products, one per position
xi of the transformed tile:

    M[xi] (tiles x Cout) = V[xi] (tiles x Cin) @ U[xi] (Cin x Cout)
    V[xi] = B^T d B at xi, tile by tile;  U[xi] = G g G^T at xi;  y tile = A^T M A

per output pixel and channel pair a^2 / m^2 multiply-adds where the direct convolution takes
9: 4 for F(2x2, 3x3), 2.25 for F(4x4, 3x3), fewer saved where the tiles overhang the output
(``products_ratio``). The larger tile rounds more: F(4x4, 3x3)'s transforms have coefficients
up to 8 and 1/24, its float32 results differ from the exact ones about ten times more than
F(2x2, 3x3)'s (measured on W2's convolutions: 2e-5 against 1.5e-6 of outputs up to 6).

Forward: the parts (cores) own whole images. Each part transforms the filters into U once per
call, already packed in the forward tile's NR-wide panels. Then block by block of tiles: a
zero-padded copy of each image covering every tile's patch, the input transform into V, the
products by the implicit-GEMM forward tile (conv_tiles.py, reading V as the image of a 1x1
convolution), the output transform into y, and the conv2d lowering's epilogue and pooling on
the block's output rows (m per tile row) while they are in cache. A block is a run of tile rows
of one image, or several whole images where an image has fewer tiles than BLOCK_TILES (the
products' rows then fill the tile's MR rows: _images_per_block).

Both gradients (lower_winograd_conv2d_gradients, alone or paired): the input gradient is the
adjoint, the kernel gradient the gradient with respect to U.

The transforms run on vectors of consecutive channels; a bounds-checked build does them one
checked float at a time and checks the first and last element of each tile call.
"""
import dataclasses
from fractions import Fraction

import llvmlite.ir as ir

from .conv import (_aligned, _check_range, add_rows, at, emit_pad, fill_zero, load_f32, parts_for, run_parts, smin,
                   split, store_f32)
from .conv_tiles import Image, emit_forward_tile, emit_weight_gradient_tile, forward_tile, host_tile
from .gemm import _vload, _vstore
from .irutil import bounds_checking, c64, f32, for_range, generation_options, i64, register_buffer

# Tiles one block transforms, multiplies and finishes while they are in cache (rounded up to
# whole tile rows): V and M of 24 tiles of W3's second convolution take a^2 * 24 * (32 + 64)
# floats, 147 KiB by F(2x2, 3x3) and 332 KiB by F(4x4, 3x3), in L2 (1 MiB).
BLOCK_TILES = 24
# A block spans several whole images where one image has fewer tiles than BLOCK_TILES, so that
# the products' rows fill the forward tile's MR rows: W2's second convolution by F(4x4, 3x3)
# has 9 tiles an image, which fill 9 of the 16 rows of two tile calls; 4 images fill 36 of 40.
# At most this many tiles (V and M of 40 tiles of that convolution: 540 KiB)
MAX_BLOCK_TILES = 40
# Tiles of a block of the weight gradient: the depth of its products (the tile's accumulators are
# loaded and stored once per block)
WEIGHT_BLOCK_TILES = 48
# ``auto`` takes Winograd where both channel counts reach this (fewer input channels make the
# products too short for the register tile, and the transforms cost more than they save)
MIN_CHANNELS = 16
# and where its products are at most this fraction of the direct convolution's (tiles
# overhanging a small odd output: W2's third convolution, 3x3 outputs on 2x2 tiles, 0.79)
MAX_PRODUCTS_RATIO = 0.6
# F(4x4, 3x3) only where an image has at least this many tiles. Speed does not need it (blocks
# span images; W3's third convolution, one 4x4 tile an image, ran 0.13-0.15 ms forward against
# the direct kernel's 0.34-0.38), accuracy does: F(4x4)'s float32 error is ~8x F(2x2)'s, and
# with it on the U-Net's 4x4 and 8x8 images (1 and 4 tiles) the U-Net's 20 Adam steps leave
# Keras's trajectory (weights off by up to 4.6e-4 against the test's 1e-4 + 1e-3 relative;
# interpolation points 0, ±1, 1/2, -2 lower the error 1.6x, not enough). F(2x2) has no minimum.
MIN_TILES_F4 = 8


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """F(m x m, 3x3): its tile side and transform matrices (rows of Fractions)."""
    m: int
    bt: tuple   # B^T, a x a
    g: tuple    # G, a x 3
    at: tuple   # A^T, m x a

    @property
    def alpha(self):
        return self.m + 2

    @property
    def positions(self):
        return self.alpha ** 2


def _matrix(rows):
    return tuple(tuple(Fraction(x) for x in row) for row in rows)


def _transposed(matrix):
    return tuple(zip(*matrix))


F2 = Algorithm(2, bt=_matrix([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
               g=_matrix([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
               at=_matrix([[1, 1, 1, 0], [0, 1, -1, -1]]))
# interpolation points 0, 1, -1, 2, -2 and infinity
F4 = Algorithm(4, bt=_matrix([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
               g=_matrix([["1/4", 0, 0], ["-1/6", "-1/6", "-1/6"], ["-1/6", "1/6", "-1/6"],
                          ["1/24", "1/12", "1/6"], ["1/24", "-1/12", "1/6"], [0, 0, 1]]),
               at=_matrix([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]))
ALGORITHMS = (F2, F4)
FORCED = {"2x2": F2, "4x4": F4}


def tiles(g, a):
    """(tile rows, tile columns) of algorithm ``a`` covering the output."""
    return -(-g.out_h // a.m), -(-g.out_w // a.m)


def products_ratio(g, a):
    """Algorithm ``a``'s multiply-adds over the direct kernels' (9 per output pixel and channel pair)."""
    th, tw = tiles(g, a)
    return a.positions * th * tw / (9 * g.out_h * g.out_w)


def winograd_algorithm(g):
    """The Winograd algorithm the convolution of geometry ``g`` (ops.conv.ConvGeometry) and its
    gradients run by under the generation options' ``winograd`` mode, or None (direct kernels):
    ``auto`` takes, where both channel counts reach MIN_CHANNELS, the algorithm with the fewest
    products among those whose products are at most MAX_PRODUCTS_RATIO of the direct ones'
    (F(4x4, 3x3) only where an image has MIN_TILES_F4 tiles); ``2x2`` and ``4x4`` take that
    algorithm wherever the geometry allows; ``off`` none."""
    mode = generation_options().winograd
    if mode == "off" or not (g.kh == g.kw == 3 and g.sh == g.sw == 1 and g.dh == g.dw == 1):
        return None
    if mode in FORCED:
        return FORCED[mode]
    candidates = [a for a in ALGORITHMS if products_ratio(g, a) <= MAX_PRODUCTS_RATIO
                  and (a is not F4 or tiles(g, a)[0] * tiles(g, a)[1] >= MIN_TILES_F4)]
    if min(g.cin, g.cout) < MIN_CHANNELS or not candidates:
        return None
    return min(candidates, key=lambda a: products_ratio(g, a))  # (the first, F2, of equals)


def describe(mode):
    """The choice under ``mode`` (Options.winograd), for the dump's notes."""
    rule = {"auto": f"F(2x2, 3x3) or F(4x4, 3x3), whichever takes fewer multiply-adds, where both channel counts "
                    f"reach {MIN_CHANNELS} and it takes at most {MAX_PRODUCTS_RATIO} of the direct kernel's (F(4x4, 3x3) "
                    f"where an image has {MIN_TILES_F4} tiles)",
            "2x2": "F(2x2, 3x3) wherever the geometry allows", "4x4": "F(4x4, 3x3) wherever the geometry allows",
            "off": "never: direct kernels only"}[mode]
    return f"cpu conv2d and its gradients, 3x3 stride 1: Winograd {rule} (winograd={mode})"


# ---- the transforms, on values (floats or vectors) --------------------------------------------

def transform(matrix, lanes):
    """f(b, values) = matrix @ values (a list of floats or vectors), with adds and subtracts
    for the coefficients +-1 and one multiply for each other."""
    def f(b, values):
        out = []
        for row in matrix:
            acc = None
            for coefficient, value in zip(row, values):
                if coefficient == 0:
                    continue
                if abs(coefficient) != 1:
                    value = b.fmul(lanes.constant(float(abs(coefficient))), value)
                if acc is None:
                    acc = value if coefficient > 0 else b.fsub(lanes.constant(0.0), value)
                else:
                    acc = b.fadd(acc, value) if coefficient > 0 else b.fsub(acc, value)
            out.append(acc)
        return out
    return f


def _both_sides(b, f, square):
    """f applied to the columns of ``square`` (a list of rows), then to the rows of the result:
    X s X^T for f = (s -> X s)."""
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


# ---- the kernels ----------------------------------------------------------------------------------

def _frame(g, a, channels):
    """The padded image every tile's a x a patch lies in: the forward's input, zero-padded."""
    th_n, tw_n = tiles(g, a)
    width = a.m * tw_n + 2
    return Image(width, channels, (a.m * th_n + 2) * width * channels)


def _block_rows(g, a, tiles_per_block):
    th_n, tw_n = tiles(g, a)
    return max(1, min(th_n, -(-tiles_per_block // tw_n)))


def _block_shape(g, a, images, tiles_per_block):
    """(tile rows a block takes of each image, tiles a block holds at most): whole images when a
    block spans ``images`` > 1 of them, else runs of tile rows of about ``tiles_per_block``."""
    th_n, tw_n = tiles(g, a)
    block_rows = _block_rows(g, a, tiles_per_block) if images == 1 else th_n
    return block_rows, images * block_rows * tw_n


def _images_per_block(g, a, mr):
    """Whole images a block of the forward or the input gradient takes: 1 where an image has
    BLOCK_TILES tiles or more (its blocks are runs of tile rows); else the number of images, up
    to MAX_BLOCK_TILES tiles, whose tiles fill the MR-row tile calls best (the fewest of equals)."""
    per_image = tiles(g, a)[0] * tiles(g, a)[1]
    if per_image >= BLOCK_TILES:
        return 1
    return max(range(1, max(1, MAX_BLOCK_TILES // per_image) + 1),
               key=lambda k: (k * per_image / (-(-k * per_image // mr) * mr), -k))


def _weight_images_per_block(g, a):
    """Whole images a block of the kernel gradient takes: its products are as deep as the
    block's tiles, so as many images as WEIGHT_BLOCK_TILES holds (1 where an image has more),
    rounded down to a power of two. The sums of a block's images are grouped in the tile's
    registers, so where the batch is split (over the cores, or over the ranks of data-parallel
    training, whose shards are halves, quarters...) blocks aligned to powers of two group them
    alike: two ranks then sum each image's terms as one process does, up to the order in which
    the parts' sums are added."""
    per_image = tiles(g, a)[0] * tiles(g, a)[1]
    return 1 << (max(1, WEIGHT_BLOCK_TILES // per_image).bit_length() - 1)


def _slices(p, sizes, own_floats):
    """The part's own slices of the scratch buffer, by name (``sizes``: floats, 0 for none)."""
    b = p.b
    offset = b.mul(p.index, c64(own_floats))
    scratch = {}
    for name, floats in sizes.items():
        if floats:
            scratch[name] = p.slice(p.scratch, offset, floats)
            offset = b.add(offset, c64(floats))
    return scratch


def _product_tiles(module, g, t, depth, width, tb):
    """The forward tiles (full panels, edge panel) of the products (tiles x depth) @ (depth x
    width), as a 1x1 convolution over the transformed tiles: tile row i reads
    V[xi][origins[i] + c] for c < depth."""
    pointwise = dataclasses.replace(g, kh=1, kw=1, pad_top=0, pad_left=0, cin=depth, cout=width)
    image = Image(1, depth, tb * depth)
    full, edge = divmod(width, t.nr)
    return (emit_forward_tile(module, pointwise, image, t, t.nr) if full else None,
            emit_forward_tile(module, pointwise, image, t, edge) if edge else None)


def _origins(b, t):
    """The MR-long array of the tile rows' offsets the forward tile reads (emit_products fills it)."""
    with b.goto_entry_block():
        origins = b.alloca(ir.ArrayType(i64, t.mr))
    return b.bitcast(origins, i64.as_pointer())


def _edge_conditions(b, a, index, count, last):
    """Per row (column) i < m of a tile: None when it lies inside the output whatever the tile,
    else the i1 that tile ``index`` is not the last (``count`` of them: ``last`` rows left)."""
    return [None if i < last else b.icmp_signed("<", index, c64(count - 1)) for i in range(a.m)]


def _tile(b, tile0, th, tr0, tw_n, tw):
    """The index in a block of the tile at row ``th`` and column ``tw`` of an image whose tile rows
    [tr0, ...) the block holds from its tile ``tile0`` on (``tw_n`` tiles a row)."""
    return b.add(tile0, b.add(b.mul(b.sub(th, tr0), c64(tw_n)), tw))


def _remaining(size, m):
    """Rows (columns) of the output the last tile row (column) covers."""
    return size - m * (-(-size // m) - 1)


def lower_winograd_conv2d(k, g, a, buffers, epilogue, pool):
    """conv2d of geometry ``g`` by algorithm ``a`` into y (``buffers``: x, kernel, y, then the
    epilogue's extra pointers), ``epilogue`` and ``pool`` as lower_conv2d takes them."""
    t = forward_tile(host_tile())
    th_n, tw_n = tiles(g, a)
    images = _images_per_block(g, a, t.mr)
    block_rows, tb = _block_shape(g, a, images, BLOCK_TILES)
    panels = -(-g.cout // t.nr)
    pixels = g.out_h * g.out_w
    padded = _frame(g, a, g.cin)
    in_scratch = pool is not None and not pool.store_input  # y of one image at a time, in scratch
    p_ = a.positions
    sizes = {"u": _aligned(p_ * panels * t.nr * g.cin), "pad": _aligned(padded.floats),
             "v": _aligned(p_ * tb * g.cin), "m": _aligned(p_ * tb * g.cout),
             "y": _aligned(pixels * g.cout) if in_scratch else 0}
    own_floats = sum(sizes.values())
    tile_functions = _product_tiles(k.module, g, t, g.cin, g.cout, tb)
    cin_lanes, cout_lanes, panel_lanes = _lanes(g.cin, t.vw), _lanes(g.cout, t.vw), _lanes(t.nr, t.vw)
    nparts = parts_for(p_ * g.batch * th_n * tw_n * g.cin * g.cout, g.batch)

    def body(p):
        b, (x, kernel, y), rest = p.b, p.buffers[:3], p.buffers[3:]
        origins = _origins(b, t)
        scratch = _slices(p, sizes, own_floats)
        u, pad, v, m = scratch["u"], scratch["pad"], scratch["v"], scratch["m"]
        if in_scratch:
            y = scratch["y"]
        emit_filter_transform(b, g, a, t, kernel, u, panel_lanes)
        n_lo, n_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, n_hi, start=n_lo, step=images, name="wimages") as n0:
            n1 = smin(b, b.add(n0, c64(images)), n_hi)
            if images == 1:
                emit_pad(b, g, padded, x, n0, n1, pad)
            with for_range(b, th_n, step=block_rows, name="wblock") as tr0:
                tr1 = smin(b, b.add(tr0, c64(block_rows)), th_n)
                image_tiles = b.mul(b.sub(tr1, tr0), c64(tw_n))
                with for_range(b, n1, start=n0, name="wvimage") as n:
                    if images > 1:
                        emit_pad(b, g, padded, x, n, b.add(n, c64(1)), pad)
                    emit_input_transform(b, g, a, padded, pad, v, tb, tr0, tr1, cin_lanes,
                                         b.mul(b.sub(n, n0), image_tiles))
                emit_products(b, g, a, t, tile_functions, v, u, m, tb, b.mul(b.sub(n1, n0), image_tiles), origins)
                with for_range(b, n1, start=n0, name="wyimage") as n:
                    y_image = c64(0) if in_scratch else b.mul(n, c64(pixels))  # the image's first row in y
                    emit_output_transform(b, g, a, m, y, y_image, tb, tr0, tr1, cout_lanes,
                                          b.mul(b.sub(n, n0), image_tiles))
                    first = b.mul(tr0, c64(a.m * g.out_w))
                    end = smin(b, b.mul(tr1, c64(a.m * g.out_w)), pixels)
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


def emit_filter_transform(b, g, a, t, kernel, u, lanes):
    """u[((xi * panels + p) * Cin + c) * NR + j] = (G g G^T)[xi] of filter (c, o = p * NR + j) of
    the HWIO kernel; zero for o past Cout (the forward tile's packed panels, one set per xi)."""
    full, edge = divmod(g.cout, t.nr)
    panels = full + bool(edge)

    def one(c, o, j, p, lanes):
        taps = [[lanes.load(b, kernel, b.add(b.mul(c64((i * 3 + jj) * g.cin), c64(g.cout)),
                                               b.add(b.mul(c, c64(g.cout)), o)))
                 for jj in range(3)] for i in range(3)]
        square = _both_sides(b, transform(a.g, lanes), taps)
        for xi in range(a.positions):
            index = b.add(b.mul(b.add(b.mul(c64(xi * panels), c64(g.cin)), b.add(b.mul(p, c64(g.cin)), c)),
                                c64(t.nr)), j)
            lanes.store(b, square[xi // a.alpha][xi % a.alpha], u, index)

    with for_range(b, g.cin, name="fc") as c:
        if full:
            with for_range(b, full, name="fp") as p:
                with for_range(b, t.nr, step=lanes.width, name="fj") as j:
                    one(c, b.add(b.mul(p, c64(t.nr)), j), j, p, lanes)
        if edge:
            with for_range(b, edge, name="fe") as j:
                one(c, b.add(c64(full * t.nr), j), j, c64(full), Lanes(1))
            with for_range(b, t.nr, start=edge, name="fz") as j:
                for xi in range(a.positions):
                    index = b.add(b.mul(b.add(c64((xi * panels + full) * g.cin), c), c64(t.nr)), j)
                    store_f32(b, ir.Constant(f32, 0.0), u, index)


def emit_input_transform(b, g, a, padded, pad, v, tb, tr0, tr1, lanes, tile0):
    """v[(xi * tb + tile) * Cin + c] = (B^T d B)[xi] of the tiles of tile rows [tr0, tr1) (tile =
    tile0 + (row - tr0) * tile columns + column), d their a x a patches of the padded image."""
    _, tw_n = tiles(g, a)
    row = padded.width * g.cin
    f = transform(a.bt, lanes)
    with for_range(b, tr1, start=tr0, name="vi") as th:
        with for_range(b, tw_n, name="vj") as tw:
            tile = _tile(b, tile0, th, tr0, tw_n, tw)
            origin = b.add(b.mul(th, c64(a.m * row)), b.mul(tw, c64(a.m * g.cin)))
            with for_range(b, g.cin, step=lanes.width, name="vc") as c:
                base = b.add(origin, c)
                patch = [[lanes.load(b, pad, b.add(base, c64(i * row + j * g.cin))) for j in range(a.alpha)]
                         for i in range(a.alpha)]
                square = _both_sides(b, f, patch)
                for xi in range(a.positions):
                    lanes.store(b, square[xi // a.alpha][xi % a.alpha], v,
                                b.add(b.mul(b.add(c64(xi * tb), tile), c64(g.cin)), c))


def emit_products(b, g, a, t, tile_functions, v, u, m, tb, count, origins):
    """m[(xi * tb + tile) * Cout + o] = sum_c v[(xi * tb + tile) * Cin + c] * U[xi][c, o] for the
    ``count`` tiles of the block, MR tiles and one NR-wide panel per forward tile call (rows past
    the last tile repeat it)."""
    full_tile, edge_tile = tile_functions
    full, edge = divmod(g.cout, t.nr)
    panels = full + bool(edge)
    checked = bounds_checking()
    with for_range(b, a.positions, name="xi") as xi:
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


def emit_output_transform(b, g, a, m, y, y_image, tb, tr0, tr1, lanes, tile0):
    """The m x m output tiles (A^T M A) of tile rows [tr0, tr1) (the image's first at tile0 of
    M) into y (rows Cout apart, the image's pixel 0 at row ``y_image``), dropping the pixels past
    the output's edge."""
    th_n, tw_n = tiles(g, a)
    f = transform(a.at, lanes)
    with for_range(b, tr1, start=tr0, name="yi") as th:
        with for_range(b, tw_n, name="yj") as tw:
            tile = _tile(b, tile0, th, tr0, tw_n, tw)
            inside = _edge_conditions(b, a, th, th_n, _remaining(g.out_h, a.m))
            inside_w = _edge_conditions(b, a, tw, tw_n, _remaining(g.out_w, a.m))
            first_pixel = b.add(y_image, b.add(b.mul(th, c64(a.m * g.out_w)), b.mul(tw, c64(a.m))))
            with for_range(b, g.cout, step=lanes.width, name="yo") as o:
                square = [[lanes.load(b, m, b.add(b.mul(b.add(c64((i * a.alpha + j) * tb), tile), c64(g.cout)), o))
                           for j in range(a.alpha)] for i in range(a.alpha)]
                out = _both_sides(b, f, square)
                for i in range(a.m):
                    for j in range(a.m):
                        conditions = [c for c in (inside[i], inside_w[j]) if c is not None]
                        index = b.add(b.mul(b.add(first_pixel, c64(i * g.out_w + j)), c64(g.cout)), o)
                        if not conditions:
                            lanes.store(b, out[i][j], y, index)
                            continue
                        condition = conditions[0] if len(conditions) == 1 else b.and_(*conditions)
                        with b.if_then(condition):
                            lanes.store(b, out[i][j], y, index)


def lower_winograd_conv2d_gradients(k, g, a, dy, input_grad=None, kernel_grad=None, dy_source=None):
    """The gradients of the convolution of geometry ``g`` by algorithm ``a``: the input gradient
    when ``input_grad`` is (kernel, dx, epilogue or None: it finishes dx and takes its extra
    pointers), the kernel gradient when ``kernel_grad`` is (x, dk, the bias gradient or None),
    or both in one pass over dy (fused_conv2d_grads). Block by block of dy's tiles, D = A dy A^T
    is computed once and feeds

        dx: M[xi] (tiles x Cin) = D[xi] (tiles x Cout) @ U[xi]^T (Cout x Cin),
            the a x a input patch under each tile += B M B^T
        dK: dU[xi] (Cin x Cout) += V[xi]^T (Cin x tiles) @ D[xi],  V = B^T x B;  dK = G^T dU G

    The input gradient is the adjoint of the forward algorithm: the patches of neighbouring tiles
    overlap by two pixels, each image's are summed into a zeroed image of the forward's padded
    frame in scratch memory, whose inside is then copied to dx and finished by the epilogue while
    in cache; over the tiles of dy the products are as few as the forward's (a 'valid'
    convolution's input gradient takes none for the padding around dy). The kernel gradient's
    products are the weight-gradient tile of a 1x1 convolution over V and D (conv_tiles.py).

    The parts split the batch. For the kernel gradient each sums its images' tiles into a dU
    (and a bias sum) of its own; after the join the calling thread adds the parts' dU and
    transforms the sum into dK. Its blocks group those sums, so a kernel gradient takes its own
    blocks paired or not (the same bits); the input gradient's results do not depend on its
    blocks. Paired, the transform of dy is done once for both (on W2's second convolution it
    took ~70 us of each gradient's ~600). With ``dy_source`` (DyProducer; ``dy`` None) each
    block's images of dy are first computed into scratch memory, where the transform and the
    bias sums read them."""
    t, tf = host_tile(), forward_tile(host_tile())
    th_n, tw_n = tiles(g, a)
    if kernel_grad is not None:
        images = _weight_images_per_block(g, a)
        block_rows, tb = _block_shape(g, a, images, WEIGHT_BLOCK_TILES)
    else:
        images = _images_per_block(g, a, tf.mr)
        block_rows, tb = _block_shape(g, a, images, BLOCK_TILES)
    frame = _frame(g, a, g.cin)  # the padded x the kernel gradient reads, the frame dx's patches sum into
    p_ = a.positions
    sizes = {}  # each part's scratch; the parts' dU first (emit_kernel_gradient_finish)
    if kernel_grad is not None:
        x, dk, bias = kernel_grad
        du_floats = p_ * g.cin * g.cout
        sizes.update(du=_aligned(du_floats), db=_aligned(g.cout) if bias is not None else 0,
                     pad=_aligned(frame.floats), v=_aligned(p_ * tb * g.cin))
        full, edge = divmod(g.cout, t.nr)
        pointwise = dataclasses.replace(g, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1, pad_top=0, pad_left=0,
                                        out_h=images * block_rows, out_w=tw_n)
        tile_of = {nr: emit_weight_gradient_tile(k.module, pointwise, Image(tw_n, g.cin, tb * g.cin), t, nr)
                   for nr in {t.nr if full else 0, edge} if nr}
    sizes["d"] = _aligned(p_ * tb * g.cout)
    if input_grad is not None:
        kernel, dx, epilogue = input_grad
        panels = -(-g.cin // tf.nr)
        sizes.update(kt=_aligned(9 * g.cin * g.cout), u=_aligned(p_ * panels * tf.nr * g.cout),
                     acc=_aligned(frame.floats), m=_aligned(p_ * tb * g.cin))
        swapped = dataclasses.replace(g, cin=g.cout, cout=g.cin)  # dx's products: Cout deep, Cin wide
        product_tiles = _product_tiles(k.module, g, tf, g.cout, g.cin, tb)
        pixels = g.in_h * g.in_w
    if dy_source is not None:
        sizes["dy"] = _aligned(images * g.out_h * g.out_w * g.cout)
    own_floats = sum(sizes.values())
    cin_lanes, cout_lanes, panel_lanes = _lanes(g.cin, t.vw), _lanes(g.cout, t.vw), _lanes(tf.nr, t.vw)
    sides = (input_grad is not None) + (kernel_grad is not None)
    nparts = parts_for(sides * p_ * g.batch * th_n * tw_n * g.cin * g.cout, g.batch)
    # what the parts read, by role (dk and the bias gradient are written after the join, by finish)
    roles = {"dy": [dy] if dy_source is None else [],
             "kernel": [kernel] if input_grad is not None else [], "dx": [dx] if input_grad is not None else [],
             "epilogue": epilogue.pointers[1:] if input_grad is not None and epilogue is not None else [],
             "x": [x] if kernel_grad is not None else [],
             "source": dy_source.pointers if dy_source is not None else []}

    def body(p):
        b = p.b
        parts = iter(p.buffers)
        group = {role: [next(parts) for _ in pointers] for role, pointers in roles.items()}
        ptr = {role: pointers[0] for role, pointers in group.items() if len(pointers) == 1}
        scratch = _slices(p, sizes, own_floats)
        d = scratch["d"]
        if kernel_grad is not None:
            fill_zero(b, scratch["du"], 0, du_floats, name="du0")
            if bias is not None:
                fill_zero(b, scratch["db"], 0, g.cout, name="db0")
        if input_grad is not None:
            origins = _origins(b, tf)
            emit_transpose(b, g, ptr["kernel"], scratch["kt"])
            emit_filter_transform(b, swapped, a, tf, scratch["kt"], scratch["u"], panel_lanes)

            def finish_image(n):
                emit_unpad(b, g, frame, scratch["acc"], ptr["dx"], n)
                if epilogue is not None:
                    epilogue.emit(b, [ptr["dx"]] + group["epilogue"], b.mul(n, c64(pixels)), pixels)

        n_lo, n_hi = split(b, p.index, p.count, g.batch, 1)
        with for_range(b, n_hi, start=n_lo, step=images, name="wimages") as n0:
            n1 = smin(b, b.add(n0, c64(images)), n_hi)
            if dy_source is not None:  # the block's images of dy (an image's blocks of tile rows share it)
                dy_source.emit(b, group["source"], n0, n1, scratch["dy"], p.status)
            if images == 1:  # blocks of tile rows of one image: its padded x, its dx frame
                if kernel_grad is not None:
                    emit_pad(b, g, frame, ptr["x"], n0, n1, scratch["pad"])
                if input_grad is not None:
                    fill_zero(b, scratch["acc"], 0, frame.floats, name="acc0")
            with for_range(b, th_n, step=block_rows, name="wblock") as tr0:
                tr1 = smin(b, b.add(tr0, c64(block_rows)), th_n)
                image_tiles = b.mul(b.sub(tr1, tr0), c64(tw_n))
                with for_range(b, n1, start=n0, name="wgimage") as n:
                    tile0 = b.mul(b.sub(n, n0), image_tiles)
                    source, image = (ptr["dy"], n) if dy_source is None else (scratch["dy"], b.sub(n, n0))
                    if kernel_grad is not None:
                        if images > 1:
                            emit_pad(b, g, frame, ptr["x"], n, b.add(n, c64(1)), scratch["pad"])
                        emit_input_transform(b, g, a, frame, scratch["pad"], scratch["v"], tb, tr0, tr1, cin_lanes,
                                             tile0)
                    emit_dy_transform(b, g, a, source, image, d, tb, tr0, tr1, cout_lanes, tile0)
                    if kernel_grad is not None and bias is not None:
                        first = b.add(b.mul(image, c64(g.out_h * g.out_w)), b.mul(tr0, c64(a.m * g.out_w)))
                        end = smin(b, b.mul(tr1, c64(a.m)), g.out_h)
                        add_rows(b, scratch["db"], source, first,
                                 b.mul(b.sub(end, b.mul(tr0, c64(a.m))), c64(g.out_w)), 0, g.cout, g.cout)
                if kernel_grad is not None:
                    emit_kernel_gradient_products(b, g, a, t, tile_of, scratch["v"], d, scratch["du"], tb,
                                                  b.mul(b.sub(n1, n0), b.sub(tr1, tr0)), -(-g.cin // t.mr))
                if input_grad is not None:
                    emit_products(b, swapped, a, tf, product_tiles, d, scratch["u"], scratch["m"], tb,
                                  b.mul(b.sub(n1, n0), image_tiles), origins)
                    with for_range(b, n1, start=n0, name="wpimage") as n:
                        if images > 1:  # whole images: each its own frame in turn
                            fill_zero(b, scratch["acc"], 0, frame.floats, name="acc0")
                        emit_patch_sums(b, g, a, frame, scratch["m"], scratch["acc"], tb, tr0, tr1, cin_lanes,
                                        b.mul(b.sub(n, n0), image_tiles))
                        if images > 1:
                            finish_image(n)
            if input_grad is not None and images == 1:
                finish_image(n0)

    def finish(b, scratch_base):
        emit_kernel_gradient_finish(b, k, g, a, scratch_base, nparts, own_floats, dk, bias, c64(sizes["du"]))

    run_parts(k, [ptr for pointers in roles.values() for ptr in pointers], nparts, body, scratch_floats=nparts * own_floats,
              after=finish if kernel_grad is not None else None)


def emit_kernel_gradient_finish(b, k, g, a, scratch_base, nparts, own_floats, dk, bias_out, db_offset):
    """dK = G^T (the parts' dU summed) G, and the bias gradient (when ``bias_out``): each part's
    own slice of ``scratch_base`` (``own_floats``) starts with its dU, its bias sums lie at
    ``db_offset`` of it."""
    parts = [at(b, scratch_base, c64(i * own_floats)) for i in range(nparts)]
    if bounds_checking():
        for part in parts:
            register_buffer(part, own_floats, k.status)
    lanes = _lanes(g.cout, host_tile().vw)
    f = transform(_transposed(a.g), lanes)
    with for_range(b, g.cin, name="kc") as c:
        with for_range(b, g.cout, step=lanes.width, name="ko") as o:
            square = []
            for i in range(a.alpha):
                row = []
                for j in range(a.alpha):
                    index = b.add(b.mul(b.add(c64((i * a.alpha + j) * g.cin), c), c64(g.cout)), o)
                    total = lanes.load(b, parts[0], index)
                    for part in parts[1:]:
                        total = b.fadd(total, lanes.load(b, part, index))
                    row.append(total)
                square.append(row)
            taps = _both_sides(b, f, square)
            for i in range(3):
                for j in range(3):
                    lanes.store(b, taps[i][j], dk, b.add(b.mul(b.add(c64((i * 3 + j) * g.cin), c), c64(g.cout)), o))
    if bias_out is not None:
        fill_zero(b, bias_out, 0, g.cout, name="dbz")
        for part in parts:
            add_rows(b, bias_out, at(b, part, db_offset), 0, 1, 0, g.cout, 0)


def emit_dy_transform(b, g, a, dy, n, d, tb, tr0, tr1, lanes, tile0):
    """d[(xi * tb + tile) * Cout + o] = (A dy A^T)[xi] of the m x m dy tiles of tile rows
    [tr0, tr1) of image n, the first at tile0 (pixels past the output's edge are zeros)."""
    th_n, tw_n = tiles(g, a)
    zero = lanes.constant(0.0)
    f = transform(_transposed(a.at), lanes)
    with for_range(b, tr1, start=tr0, name="di") as th:
        with for_range(b, tw_n, name="dj") as tw:
            tile = _tile(b, tile0, th, tr0, tw_n, tw)
            inside = _edge_conditions(b, a, th, th_n, _remaining(g.out_h, a.m))
            inside_w = _edge_conditions(b, a, tw, tw_n, _remaining(g.out_w, a.m))
            first_pixel = b.add(b.mul(n, c64(g.out_h * g.out_w)),
                                b.add(b.mul(th, c64(a.m * g.out_w)), b.mul(tw, c64(a.m))))
            with for_range(b, g.cout, step=lanes.width, name="do") as o:
                square = []
                for i in range(a.m):
                    row = []
                    for j in range(a.m):
                        index = b.add(b.mul(b.add(first_pixel, c64(i * g.out_w + j)), c64(g.cout)), o)
                        conditions = [c for c in (inside[i], inside_w[j]) if c is not None]
                        if not conditions:
                            row.append(lanes.load(b, dy, index))
                            continue
                        condition = conditions[0] if len(conditions) == 1 else b.and_(*conditions)
                        before = b.block
                        with b.if_then(condition):
                            value = lanes.load(b, dy, index)
                            loaded = b.block
                        phi = b.phi(value.type)
                        phi.add_incoming(value, loaded)
                        phi.add_incoming(zero, before)
                        row.append(phi)
                    square.append(row)
                out = _both_sides(b, f, square)
                for xi in range(a.positions):
                    lanes.store(b, out[xi // a.alpha][xi % a.alpha], d,
                                b.add(b.mul(b.add(c64(xi * tb), tile), c64(g.cout)), o))


def emit_kernel_gradient_products(b, g, a, t, tile_of, v, d, du, tb, rows, row_tiles):
    """du[(xi * Cin + c) * Cout + o] += sum over the block's tiles (``rows`` tile rows) of
    v[xi][tile][c] * d[xi][tile][o]: tiles of MR channels x one NR-wide panel."""
    full, edge = divmod(g.cout, t.nr)
    tw_n = tiles(g, a)[1]
    with for_range(b, a.positions, name="gxi") as xi:
        v_xi, d_xi = b.mul(xi, c64(tb * g.cin)), b.mul(xi, c64(tb * g.cout))
        du_xi = b.mul(xi, c64(g.cin * g.cout))
        with for_range(b, row_tiles, name="gm") as mt:
            m0 = b.mul(mt, c64(t.mr))
            mr = smin(b, b.sub(c64(g.cin), m0), t.mr)
            for p, nr in [(j, t.nr) for j in range(full)] + ([(full, edge)] if edge else []):
                c = b.add(du_xi, b.add(b.mul(m0, c64(g.cout)), c64(p * t.nr)))
                if bounds_checking():
                    last_tile = b.sub(b.mul(rows, c64(tw_n)), c64(1))
                    _check_range(b, v, b.add(v_xi, m0), b.add(v_xi, b.add(b.mul(last_tile, c64(g.cin)),
                                                                          b.add(m0, b.sub(mr, c64(1))))))
                    _check_range(b, d, b.add(d_xi, c64(p * t.nr)),
                                 b.add(d_xi, b.add(b.mul(last_tile, c64(g.cout)), c64(p * t.nr + nr - 1))))
                    _check_range(b, du, c, b.add(c, b.add(b.mul(b.sub(mr, c64(1)), c64(g.cout)), c64(nr - 1))))
                b.call(tile_of[nr], [at(b, v, v_xi), at(b, d, b.add(d_xi, c64(p * t.nr))), c64(1), rows, m0, mr,
                                     at(b, du, c), ir.Constant(ir.IntType(1), 1)])


def emit_patch_sums(b, g, a, frame, m, acc, tb, tr0, tr1, lanes, tile0):
    """acc (the padded frame of one image) += B M B^T of the tiles of tile rows [tr0, tr1) (the
    first at tile0 of M), each a x a patch where the forward's input patch of that tile lies."""
    _, tw_n = tiles(g, a)
    row = frame.width * g.cin
    f = transform(_transposed(a.bt), lanes)
    with for_range(b, tr1, start=tr0, name="pi") as th:
        with for_range(b, tw_n, name="pj") as tw:
            tile = _tile(b, tile0, th, tr0, tw_n, tw)
            origin = b.add(b.mul(th, c64(a.m * row)), b.mul(tw, c64(a.m * g.cin)))
            with for_range(b, g.cin, step=lanes.width, name="pc") as c:
                square = [[lanes.load(b, m, b.add(b.mul(b.add(c64((i * a.alpha + j) * tb), tile), c64(g.cin)), c))
                           for j in range(a.alpha)] for i in range(a.alpha)]
                patch = _both_sides(b, f, square)
                base = b.add(origin, c)
                for i in range(a.alpha):
                    for j in range(a.alpha):
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
