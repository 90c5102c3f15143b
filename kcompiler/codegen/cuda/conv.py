"""CUDA templates of conv2d and its two gradients (ops/conv.py: NHWC data, HWIO kernel), each an
*implicit GEMM*: a matrix product whose operand tiles are gathered from the tensors while they
are loaded into shared memory, so the column matrix of im2col is never built:

    conv2d                  y [B*OH*OW, OC] = cols(x) [B*OH*OW, KH*KW*C] @ K [KH*KW*C, OC]
    conv2d_backward_input   dx, one stride phase at a time (below)  = dy gathered @ K^T
    conv2d_backward_kernel  dK [KH*KW*C, OC] = cols(x)^T [KH*KW*C, B*OH*OW] @ dy [B*OH*OW, OC]

``cols(x)[(b, oh, ow), (i, j, c)] = x[b, oh*sh - pad_top + i*dh, ow*sw - pad_left + j*dw, c]``,
zero where the tap falls into the padding: a *guarded zero load*, never a read.

One tiled GEMM (``_gemm_function``) serves the three: a block computes a BM x BN tile of the
product with BM/TM x BN/TN threads, TM x TN accumulators each in registers, rows and columns
interleaved (thread (tx, ty) owns rows ty + i*TY and columns tx + j*TX, so neighbouring threads
read neighbouring shared words and store neighbouring output elements). The reduction runs in
slices of BK: the block's threads gather an A slice [BM x BK] and a B slice [BK x BN] into shared
memory, one element each per step of a short loop (consecutive threads take consecutive
elements along the tensor's contiguous axis: channels for x and dy, output channels for K),
barrier, multiply-accumulate from shared memory into registers, barrier. Each op only says how
one element of A, of B and of the result is addressed (``Gather``, ``Scatter``): index
arithmetic on the global row, column and reduction indices (shapes are compile-time constants,
so divisions are by constants), and the conditions under which the element exists. Every such
condition is an index guard, ``KC_GUARD(...)`` (prelude.h), and a guard is only written where
it can fail for the shape at hand (a 'valid' convolution has no padding guard), so that removing
any one changes what the kernel reads or writes: the tests remove each in turn.

The text is the barrier-split form of prelude.h (``KC_SHARED`` tiles, ``KC_PER_THREAD``
accumulators, ``KC_THREADS`` regions between ``KC_SYNC`` barriers, block-uniform control flow)
and launches with ``barriers=True``; under nvcc it is a plain CUDA kernel. Tiles: 64 x 64 with
4 x 4 per thread (256 threads), or 128 x 32 when the product has at most 32 columns (few output
channels: half a 64-wide tile would idle); BK = 16; rows and columns pad by one word in shared
memory so the transposing stores of a warp do not hit one bank.

**conv2d_backward_input** is the transposed convolution: ``dx[b, h, w, c] = sum over taps (i,
j) and output channels of dy[b, oh, ow, :] . K[i, j, c, :]`` where ``oh = (h + pad_top - i*dh)
/ sh`` is an integer in [0, OH). With a stride > 1 that holds only for the taps with ``i*dh =
h + pad_top (mod sh)``, so the pixels split into sh*sw *stride phases* (by ``(h + pad_top) mod
sh`` and ``(w + pad_left) mod sw``), each its own GEMM over exactly its taps: no multiply-add is
spent on a tap that does not meet the pixel, and a phase that no tap meets (a 1x1 kernel with
stride 2) writes zeros without reducing anything. ``blockIdx.z`` is the phase; a phase's first
pixel, pixel count, first tap, tap count and output offset are compile-time tables that the
kernel picks from with a chain of selects (no local-memory table). Within a phase pixel (u, v)
is (first_h + u*sh, first_w + v*sw) and tap (ti, tj) is (tap0_h + ti*step_h, tap0_w +
tj*step_w) with ``step = s / gcd(d, s)``; it meets output pixel ``oh = u + base_h -
ti*(dh / gcd(dh, sh))``. Rows run over ceil(H/sh) x ceil(W/sw) pixels per phase, so a phase
with one row fewer guards its stores.

**conv2d_backward_kernel** reduces over every output pixel of the batch, B*OH*OW, while its
product is small (KH*KW*C x OC, 288 x 32 for a 3x3 layer of 32 channels: 6 tiles). When the
tiles would not fill ``TARGET_BLOCKS`` blocks, the reduction is split over ``blockIdx.z`` into
contiguous ranges of at least ``MIN_SPLIT_SLICES`` slices, and the split blocks add their
partial tiles into dK with ``atomicAdd`` after a first launch zeroes it. Atomics, not a
deterministic second pass over per-split partials, because a second pass needs a workspace of
splits x KH*KW*C x OC floats and a CudaKernel has no buffers but its node's (the runtime
allocates nothing per kernel); the price is that on a GPU the order in which splits add (and so
the last bits of dK) can differ between runs, within float32 tolerance. Without a split (enough
tiles, or a short reduction) the kernel stores: one launch, deterministic.

Fused epilogues: ``FUSED_CONV_HEADS`` maps the heads conv2d and conv2d_backward_input to the
templates of a ``fused_contraction`` node (the dispatcher in gemm.py registers the op): the
element-wise members (cuda/epilogue.py) run on each element of the product as it is stored,
at its flat index and column (the output channel).

Indices are ``int`` where every buffer has fewer than 2^30 elements, ``long long`` otherwise.
Only float32 is templated.
"""
import math
from dataclasses import dataclass

from ...errors import UnsupportedError
from ...ir.registry import lowering
from ...ops.conv import conv_geometry
from ...ops.fused_contraction import head_type
from .epilogue import Epilogue
from .gemm import FUSED_HEADS
from .render import CudaKernel, Launch, TemplateContext, emulation_entry, parameters

# Blocks that keep an H100/H200 (132 SMs) busy for about two waves: below this many output tiles
# conv2d_backward_kernel splits its reduction.
TARGET_BLOCKS = 256
# A split reduces at least this many BK-slices, so its partial tile is worth an atomic add.
MIN_SPLIT_SLICES = 8


@dataclass(frozen=True)
class Tiling:
    """A block computes a bm x bn tile of the product in slices of bk, each thread tm x tn."""
    bm: int
    bn: int
    bk: int = 16
    tm: int = 4
    tn: int = 4

    @property
    def tx(self):
        return self.bn // self.tn

    @property
    def ty(self):
        return self.bm // self.tm

    @property
    def threads(self):
        return self.tx * self.ty


WIDE = Tiling(64, 64)
NARROW = Tiling(128, 32)


def tiling(columns):
    return NARROW if columns <= NARROW.bn else WIDE


@dataclass(frozen=True)
class Gather:
    """How a thread reads one element of an operand tile: ``statements`` (C, from the global
    indices ``row``/``col`` and ``red``) prepare ``address`` into ``buffer``; the element is read
    when every one of ``guards`` holds (besides the template's own bounds), else it is zero.
    ``red_fast``: consecutive threads take consecutive reduction indices (the tensor is
    contiguous along them); otherwise consecutive rows/columns."""
    buffer: str
    statements: tuple
    guards: tuple
    address: str
    red_fast: bool


@dataclass(frozen=True)
class Scatter:
    """Where element (row, col) of the product goes: ``statements`` prepare ``flat``, the index
    into out0 (and the epilogue's flat index); it is written when ``guards`` hold."""
    statements: tuple
    guards: tuple
    flat: str


def _range_guards(var, lo, hi, size):
    """Guards keeping ``var`` (which takes values in [lo, hi]) inside [0, size): only those that can fail."""
    return ((f"{var} >= 0",) if lo < 0 else ()) + ((f"{var} < {size}",) if hi >= size else ())


def _index_type(*sizes):
    # below 2^30 elements, indices computed for the rows of a last partial tile (up to one image
    # or one tile past the end, never dereferenced) still fit an int
    return "int" if max(sizes) < 2 ** 30 else "long long"


def _im2col(g, I, pixel, tap):
    """Element [pixel, tap] of cols(x), pixel = (b, oh, ow) and tap = (i, j, c), both in range."""
    hi_h = (g.out_h - 1) * g.sh - g.pad_top + (g.kh - 1) * g.dh
    hi_w = (g.out_w - 1) * g.sw - g.pad_left + (g.kw - 1) * g.dw
    return (
        (f"const {I} n = {pixel} / {g.out_h * g.out_w}, p = {pixel} % {g.out_h * g.out_w};",
         f"const {I} i = {tap} / {g.kw * g.cin}, j = {tap} / {g.cin} % {g.kw}, c = {tap} % {g.cin};",
         f"const {I} ih = p / {g.out_w} * {g.sh} - {g.pad_top} + i * {g.dh};",
         f"const {I} iw = p % {g.out_w} * {g.sw} - {g.pad_left} + j * {g.dw};"),
        _range_guards("ih", -g.pad_top, hi_h, g.in_h) + _range_guards("iw", -g.pad_left, hi_w, g.in_w),
        f"((n * {g.in_h} + ih) * {g.in_w} + iw) * {g.cin} + c")


# ---- the tiled GEMM --------------------------------------------------------------------------

def _guarded(conditions):
    return " && ".join(f"KC_GUARD({c})" for c in conditions)


def _tile_load(tile, outer, extent, tile_extent, gather, t, I):
    """One region's loop gathering operand tile ``tile`` [bk][tile_extent + 1]: ``outer`` is the
    row (A) or column (B) index, ``extent`` its bound."""
    count = tile_extent * t.bk // t.threads
    if gather.red_fast:
        kk, o = f"thread % {t.bk}", f"thread / {t.bk} + {t.threads // t.bk} * q"
    else:
        o, kk = f"thread % {tile_extent}", f"thread / {tile_extent} + {t.threads // tile_extent} * q"
    guards = (f"{outer} < {extent}", "red < k_end") + gather.guards
    return ["#pragma unroll",
            f"for (int q = 0; q < {count}; ++q) {{",
            f"    const int kk = {kk}, o = {o};",
            f"    const {I} {outer} = {outer}0 + o, red = k0 + kk;",
            *("    " + s for s in gather.statements),
            "    float element = 0.0f;",
            f"    if ({_guarded(guards)}) element = {gather.buffer}[{gather.address}];",
            f"    {tile}[kk][o] = element;",
            "}"]


def _indent(lines, depth):
    return ["    " * depth + line for line in lines]


def _gemm_function(function, buffers, t, I, rows, cols, a, b, out, k_begin, k_end, prologue=(), store=None):
    """A __global__ function computing the tile of the product at (blockIdx.x, blockIdx.y) over
    reduction indices [k_begin, k_end) (C expressions, block-uniform, after ``prologue``) and
    handing each element to ``store(value)`` (C statement; default ``out0[flat] = value``)."""
    store = store or (lambda value: f"out0[flat] = {value};")
    return "\n".join([
        f'extern "C" __global__ void {function}({parameters(buffers)}) {{',
        f"    KC_SHARED(float, a_tile, [{t.bk}][{t.bm + 1}]);",
        f"    KC_SHARED(float, b_tile, [{t.bk}][{t.bn + 1}]);",
        f"    KC_PER_THREAD(float, acc, [{t.tm}][{t.tn}]);",
        f"    const {I} row0 = ({I})blockIdx.x * {t.bm}, col0 = ({I})blockIdx.y * {t.bn};",
        *_indent(prologue, 1),
        f"    const {I} k_begin = {k_begin}, k_end = {k_end};",
        "    KC_THREADS {",
        "        #pragma unroll",
        f"        for (int i = 0; i < {t.tm}; ++i)",
        "            #pragma unroll",
        f"            for (int j = 0; j < {t.tn}; ++j) KC_MINE(acc)[i][j] = 0.0f;",
        "    }",
        f"    for ({I} k0 = k_begin; k0 < k_end; k0 += {t.bk}) {{",
        "        KC_THREADS {",
        f"            const int thread = threadIdx.y * {t.tx} + threadIdx.x;",
        *_indent(_tile_load("a_tile", "row", rows, t.bm, a, t, I), 3),
        *_indent(_tile_load("b_tile", "col", cols, t.bn, b, t, I), 3),
        "        }",
        "        KC_SYNC;  // the tiles are complete",
        "        KC_THREADS {",
        "            #pragma unroll",
        f"            for (int kk = 0; kk < {t.bk}; ++kk) {{",
        f"                float a[{t.tm}], b[{t.tn}];",
        "                #pragma unroll",
        f"                for (int i = 0; i < {t.tm}; ++i) a[i] = a_tile[kk][threadIdx.y + i * {t.ty}];",
        "                #pragma unroll",
        f"                for (int j = 0; j < {t.tn}; ++j) b[j] = b_tile[kk][threadIdx.x + j * {t.tx}];",
        "                #pragma unroll",
        f"                for (int i = 0; i < {t.tm}; ++i)",
        "                    #pragma unroll",
        f"                    for (int j = 0; j < {t.tn}; ++j) KC_MINE(acc)[i][j] += a[i] * b[j];",
        "            }",
        "        }",
        "        KC_SYNC;  // every thread is done with the tiles before they are overwritten",
        "    }",
        "    KC_THREADS {",
        "        #pragma unroll",
        f"        for (int i = 0; i < {t.tm}; ++i) {{",
        "            #pragma unroll",
        f"            for (int j = 0; j < {t.tn}; ++j) {{",
        f"                const {I} row = row0 + (int)threadIdx.y + i * {t.ty}, "
        f"col = col0 + (int)threadIdx.x + j * {t.tx};",
        *_indent(out.statements, 4),
        f"                const {I} flat = {out.flat};",
        f"                if ({_guarded((f'row < {rows}', f'col < {cols}') + out.guards)}) "
        f"{store('KC_MINE(acc)[i][j]')}",
        "            }",
        "        }",
        "    }",
        "}",
        emulation_entry(function, buffers, barriers=True)])


def _blocks(n, tile):
    return max(1, -(-n // tile))


def _check_float32(ctx, op, types):
    if any(t.dtype != "float32" for t in types):
        raise UnsupportedError(f"{op}: the CUDA template computes float32 only, got "
                               f"{', '.join(t.dtype for t in types)} ({ctx.node.get('layer') or 'no layer'})")


def _epilogue_store(epilogue):
    return lambda value: epilogue.call(value, "col", "flat")


# ---- conv2d --------------------------------------------------------------------------------------

@lowering("cuda", "conv2d")
def lower_conv2d(ctx, epilogue=None):
    """y = cols(x) @ K; ``epilogue`` (cuda/epilogue.py) finishes each element where it is stored."""
    _check_float32(ctx, "conv2d", ctx.in_types)
    x, kernel = ctx.in_types
    g = conv_geometry("conv2d", x.shape, kernel.shape, ctx.attrs)
    rows, cols, depth = g.batch * g.out_h * g.out_w, g.cout, g.kh * g.kw * g.cin
    t = tiling(cols)
    I = _index_type(rows * cols, *(b.size for b in ctx.buffers))
    statements, guards, address = _im2col(g, I, "row", "red")
    a = Gather("in0", statements, guards, address, red_fast=True)
    b = Gather("in1", (), (), f"red * {g.cout} + col", red_fast=False)
    out = Scatter((), (), f"row * {g.cout} + col")
    source = _gemm_function(ctx.name, ctx.buffers, t, I, rows, cols, a, b, out, "0", depth,
                            store=epilogue and _epilogue_store(epilogue))
    launch = Launch(ctx.name, (_blocks(rows, t.bm), _blocks(cols, t.bn), 1), (t.tx, t.ty, 1), barriers=True)
    return CudaKernel(ctx.name, (epilogue.source if epilogue else "") + source, (launch,), ctx.buffers)


# ---- conv2d_backward_input -----------------------------------------------------------------------

@dataclass(frozen=True)
class Phases:
    """One spatial axis of the transposed convolution, split by stride phase ph in [0, stride):
    the pixels h = first[ph] + stride*u (u < count[ph]) meet exactly the taps i = tap0[ph] +
    step*ti (ti < taps[ph]), tap ti at output position u + base[ph] - out_step*ti."""
    first: tuple
    count: tuple
    tap0: tuple
    taps: tuple
    base: tuple
    step: int
    out_step: int
    rows: int          # pixels per phase in the layout: ceil(size / stride)

    @classmethod
    def of(cls, size, window, stride, dilation, pad):
        first, count, tap0, taps, base = [], [], [], [], []
        for ph in range(stride):
            h0 = (ph - pad) % stride
            meeting = [i for i in range(window) if i * dilation % stride == ph]
            first.append(h0)
            count.append(max(0, -(-(size - h0) // stride)))
            tap0.append(meeting[0] if meeting else 0)
            taps.append(len(meeting))
            base.append((h0 + pad - meeting[0] * dilation) // stride if meeting else 0)
        g = math.gcd(dilation, stride)
        return cls(tuple(first), tuple(count), tuple(tap0), tuple(taps), tuple(base), stride // g, dilation // g,
                   -(-size // stride))

    @property
    def max_taps(self):
        return max(self.taps)

    def out_range(self):
        """(lowest, highest) output position any computed row meets, over phases with taps."""
        live = [ph for ph, n in enumerate(self.taps) if n]
        return (min(self.base[ph] - self.out_step * (self.taps[ph] - 1) for ph in live),
                max(self.rows - 1 + self.base[ph] for ph in live))


def _pick(phase, values):
    """C expression: values[phase], a chain of selects (a constant when all are equal)."""
    if len(set(values)) == 1:
        return str(values[0])
    text = str(values[-1])
    for ph in reversed(range(len(values) - 1)):
        text = f"({phase} == {ph} ? {values[ph]} : {text})"
    return text


@lowering("cuda", "conv2d_backward_input")
def lower_conv2d_backward_input(ctx, epilogue=None):
    """dx phase by phase (blockIdx.z): dy gathered at the output pixels each tap of the phase
    meets @ the phase's taps of K transposed."""
    _check_float32(ctx, "conv2d_backward_input", ctx.in_types)
    dy, kernel = ctx.in_types
    h, w = ctx.attrs["input_hw"]
    g = conv_geometry("conv2d_backward_input", (dy.shape[0], h, w, kernel.shape[2]), kernel.shape, ctx.attrs)
    ph_h = Phases.of(g.in_h, g.kh, g.sh, g.dh, g.pad_top)
    ph_w = Phases.of(g.in_w, g.kw, g.sw, g.dw, g.pad_left)
    pixels = ph_h.rows * ph_w.rows
    rows, cols = g.batch * pixels, g.cin
    t = tiling(cols)
    I = _index_type(rows * cols, *(b.size for b in ctx.buffers))
    prologue = [f"const int phase_h = blockIdx.z / {g.sw}, phase_w = blockIdx.z % {g.sw};"]
    for name in ("first", "count", "tap0", "taps", "base"):
        prologue.append(f"const int {name}_h = {_pick('phase_h', getattr(ph_h, name))}, "
                        f"{name}_w = {_pick('phase_w', getattr(ph_w, name))};")
    # reduction index (ti, tj, oc), ti < taps_h through k_end; tj < taps_w needs a guard where
    # some phase of the w axis has fewer taps than the layout's max_taps
    tap_w_guard = ("tj < taps_w",) if min(ph_w.taps) < ph_w.max_taps else ()
    reduction = (f"const {I} ti = red / {ph_w.max_taps * g.cout}, tj = red / {g.cout} % {ph_w.max_taps}, "
                 f"oc = red % {g.cout};",)
    lo_h, hi_h = ph_h.out_range()
    lo_w, hi_w = ph_w.out_range()
    a = Gather("in0", (f"const {I} n = row / {pixels}, u = row % {pixels} / {ph_w.rows}, v = row % {ph_w.rows};",
                       *reduction,
                       f"const {I} oh = u + base_h - ti * {ph_h.out_step}, ow = v + base_w - tj * {ph_w.out_step};"),
               tap_w_guard + _range_guards("oh", lo_h, hi_h, g.out_h) + _range_guards("ow", lo_w, hi_w, g.out_w),
               f"((n * {g.out_h} + oh) * {g.out_w} + ow) * {g.cout} + oc", red_fast=True)
    b = Gather("in1", reduction + (f"const {I} i = tap0_h + ti * {ph_h.step}, j = tap0_w + tj * {ph_w.step};",),
               tap_w_guard, f"((i * {g.kw} + j) * {g.cin} + col) * {g.cout} + oc", red_fast=True)
    out = Scatter((f"const {I} n = row / {pixels}, u = row % {pixels} / {ph_w.rows}, v = row % {ph_w.rows};",
                   f"const {I} h = first_h + u * {g.sh}, w = first_w + v * {g.sw};"),
                  (("u < count_h",) if min(ph_h.count) < ph_h.rows else ())
                  + (("v < count_w",) if min(ph_w.count) < ph_w.rows else ()),
                  f"((n * {g.in_h} + h) * {g.in_w} + w) * {g.cin} + col")
    source = _gemm_function(ctx.name, ctx.buffers, t, I, rows, cols, a, b, out, "0",
                            f"taps_h * {ph_w.max_taps * g.cout}", prologue,
                            store=epilogue and _epilogue_store(epilogue))
    launch = Launch(ctx.name, (_blocks(rows, t.bm), _blocks(cols, t.bn), g.sh * g.sw), (t.tx, t.ty, 1),
                    barriers=True)
    return CudaKernel(ctx.name, (epilogue.source if epilogue else "") + source, (launch,), ctx.buffers)


# ---- conv2d_backward_kernel ----------------------------------------------------------------------

def reduction_splits(tiles, slices):
    """How many ranges of BK-slices the reduction of a product of ``tiles`` tiles splits into."""
    if tiles >= TARGET_BLOCKS:
        return 1
    return max(1, min(-(-TARGET_BLOCKS // tiles), slices // MIN_SPLIT_SLICES))


@lowering("cuda", "conv2d_backward_kernel")
def lower_conv2d_backward_kernel(ctx):
    """dK = cols(x)^T @ dy, the reduction over B*OH*OW split over blockIdx.z when the product has
    too few tiles (the splits add into dK, zeroed by a first launch)."""
    _check_float32(ctx, "conv2d_backward_kernel", ctx.in_types)
    x, dy = ctx.in_types
    g = conv_geometry("conv2d_backward_kernel", x.shape, ctx.attrs["kernel_shape"], ctx.attrs)
    rows, cols, depth = g.kh * g.kw * g.cin, g.cout, g.batch * g.out_h * g.out_w
    t = tiling(cols)
    I = _index_type(depth, *(b.size for b in ctx.buffers))
    grid = (_blocks(rows, t.bm), _blocks(cols, t.bn))
    slices = _blocks(depth, t.bk)
    per_split = -(-slices // reduction_splits(grid[0] * grid[1], slices))
    splits = -(-slices // per_split)
    statements, guards, address = _im2col(g, I, "red", "row")
    a = Gather("in0", statements, guards, address, red_fast=False)
    b = Gather("in1", (), (), f"red * {g.cout} + col", red_fast=False)
    out = Scatter((), (), f"row * {g.cout} + col")
    k_begin = f"({I})blockIdx.z * {per_split * t.bk}"
    k_end = f"(k_begin + {per_split * t.bk} < {depth} ? k_begin + {per_split * t.bk} : {depth})"
    store = (lambda value: f"atomicAdd(&out0[flat], {value});") if splits > 1 else None
    source = _gemm_function(ctx.name, ctx.buffers, t, I, rows, cols, a, b, out, k_begin, k_end, store=store)
    launch = Launch(ctx.name, grid + (splits,), (t.tx, t.ty, 1), barriers=True)
    if splits == 1:
        return CudaKernel(ctx.name, source, (launch,), ctx.buffers)
    zero = f"{ctx.name}_zero"
    size = rows * cols
    zero_source = "\n".join([
        f'extern "C" __global__ void {zero}({parameters(ctx.buffers)}) {{',
        f"    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < {size}; "
        "e += (long long)gridDim.x * blockDim.x)",
        "        out0[e] = 0.0f;",
        "}",
        emulation_entry(zero, ctx.buffers)])
    return CudaKernel(ctx.name, zero_source + "\n" + source, (Launch.grid_stride(zero, size), launch), ctx.buffers)


# ---- fused_contraction heads ---------------------------------------------------------------------

def _head_context(ctx):
    """The fused node's context as its head's template sees it: the head's operands (the first
    n_head of the node's) and attrs, the node's buffers and name."""
    n = ctx.attrs["n_head"]
    node = {"op": ctx.attrs["head"], "attrs": ctx.attrs["head_attrs"], "type": head_type(ctx.in_types, ctx.attrs),
            "layer": ctx.node.get("layer")}
    return TemplateContext(ctx.name, node, list(ctx.in_types[:n]), [node["type"]], {}, ctx.buffers, ctx.node_id)


def fused_conv2d(ctx):
    """A fused_contraction node whose head is conv2d."""
    return lower_conv2d(_head_context(ctx), epilogue=Epilogue(ctx))


def fused_conv2d_backward_input(ctx):
    """A fused_contraction node whose head is conv2d_backward_input."""
    return lower_conv2d_backward_input(_head_context(ctx), epilogue=Epilogue(ctx))


# head op -> template of a fused_contraction node with that head (gemm.FUSED_HEADS takes them in)
FUSED_CONV_HEADS = {"conv2d": fused_conv2d, "conv2d_backward_input": fused_conv2d_backward_input}
FUSED_HEADS.update(FUSED_CONV_HEADS)  # the one fused_contraction template dispatches on its head
