"""The SGEMM template of the CUDA backend: ``matmul``, and ``fused_contraction`` nodes whose
head is a matmul (the epilogue, cuda/epilogue.py, finishes each element at the store).

One ``__global__`` function per node, specialised to its shapes (M, N, K, leading
dimensions and batch strides are literals), written in the barrier-split form of prelude.h
and launched with ``Launch(..., barriers=True)``:

- **Block tile** ``bm x bn`` of the product per block of ``ty x tx`` threads; each thread
  holds an ``rm x rn`` register tile (``KC_PER_THREAD`` accumulators, indexed by constants
  only: fully unrolled, registers under nvcc) made of 4 x 4 pieces ``ty * 4`` rows and
  ``tx * 4`` columns apart, so that the 4-float fragments the threads of a warp read from
  shared memory are contiguous: conflict-free 128-bit loads (``KC_FRAGMENT4``).
- **The k loop** walks ``bk``-deep slices of op(A) and op(B) through two shared buffers,
  stored k-major (``[bk][bm + 4]``: fragments for one k are contiguous; the padding keeps
  the transposing stores of k-contiguous operands off a single bank and rows 16-byte
  aligned). Step s issues the global loads of slice s into registers, multiplies slice
  s - 1 from shared memory while they are in flight, then stores slice s into the other
  buffer: one barrier a step, ``bk * rm * rn`` FMAs a thread between a load and its use.
- **Registers**: ``__launch_bounds__`` holds a thread to 128 registers (two 256-thread
  blocks an SM); ptxas fits the 8 x 8 tile without spilling (the tests check every tile).
- **Global loads**: float4 (``__ldg``, ld.global.nc.v4) where the stored matrix's rows are
  a multiple of 4 floats long and its pointer is 16-byte aligned (checked at run time:
  every buffer of the memory plan is, a view need not be); scalar loads otherwise. A
  float4 lies wholly inside or wholly outside a row, so one row and one column guard cover
  it. Everything outside op(A) or op(B) is loaded as 0.
- **Edges**: M, N, K need not be multiples of anything: every load and store is guarded
  (``KC_GUARD``), zeros contribute nothing to the kept products, and the stores skip rows
  and columns outside C.
- **Batches**: ``(..., M, K) @ (K, N)`` is one GEMM over all ``batch * M`` rows (as on the
  CPU); otherwise grid z walks the output's batch, each operand's matrix found through its
  own broadcast strides (numpy's broadcasting of the batch axes, any rank).
- **Grids**: x the column tiles, y the row tiles, z the batch; y and z loop (uniform per
  block) past the 65,535 limit of those grid dimensions.
- **Tile choice** (``choose_tile``): the largest tile whose grid still fills
  ``TARGET_BLOCKS`` blocks (an H100/H200 has 132 SMs), the smallest tile otherwise.

``FUSED_HEADS`` maps the head op of a ``fused_contraction`` to the template that lowers it
(this module registers ``matmul``; cuda/conv.py adds the convolution heads): the
``fused_contraction`` lowering dispatches through it.
"""
import math
from dataclasses import dataclass

from ...errors import UnsupportedError
from ...ir.registry import lowering
from ...ops.fused_contraction import head_type
from .epilogue import Epilogue
from .render import CudaKernel, Launch, emulation_entry, parameters

TARGET_BLOCKS = 132          # one block per SM of an H100/H200: a smaller tile below that
MAX_GRID_YZ = 65535          # CUDA's limit on gridDim.y and gridDim.z
INT32_LIMIT = 2 ** 31 - 1    # indices within a matrix are 32-bit; offsets of matrices 64-bit
SHARED_PAD = 4               # floats after each k-row of a shared tile (see the docstring)


@dataclass(frozen=True)
class Tile:
    """A block tile ``bm x bn``, ``bk`` deep, computed by ``ty x tx`` threads."""
    bm: int
    bn: int
    bk: int
    ty: int
    tx: int

    @property
    def threads(self):
        return self.ty * self.tx

    @property
    def rm(self):
        return self.bm // self.ty

    @property
    def rn(self):
        return self.bn // self.tx


TILES = (Tile(128, 128, 8, 16, 16),    # 8 x 8 per thread: the large-GEMM tile
         Tile(64, 64, 16, 16, 16),     # 4 x 4 per thread
         Tile(32, 32, 8, 8, 8))        # 4 x 4 per thread, 64 threads: small products


@dataclass(frozen=True)
class Operand:
    """One operand as stored: ``rows x cols`` row-major (rows ``cols`` floats apart), the
    contraction axis along its rows (``k_contiguous``) or down its columns; ``offset``: the C
    expression of its matrix's first element for batch ``batch``."""
    name: str
    rows: int
    cols: int
    k_contiguous: bool
    offset: str


@dataclass(frozen=True)
class Product:
    """``batch`` products ``m x n``, ``k`` deep, of ``a`` and ``b``, C's matrices ``m * n``
    apart."""
    batch: int
    m: int
    n: int
    k: int
    a: Operand
    b: Operand


def product(a_type, b_type, out_shape, attrs):
    """The GEMMs of matmul(a, b) (``attrs``: transpose_a, transpose_b) giving ``out_shape``."""
    for t in (a_type, b_type):
        if t.dtype != "float32":
            raise UnsupportedError(f"matmul on CUDA: float32 operands only, got {t.dtype}")
    ta, tb = attrs.get("transpose_a", False), attrs.get("transpose_b", False)
    m, n = out_shape[-2:]
    k = a_type.shape[-2] if ta else a_type.shape[-1]
    batch_shape = tuple(out_shape[:-2])
    a_rows, a_cols = a_type.shape[-2:]
    b_rows, b_cols = b_type.shape[-2:]
    if len(b_type.shape) == 2 and not ta:   # (..., M, K) @ (K, N): one GEMM over every row
        m, a_rows, batch_shape = math.prod(batch_shape) * m, math.prod(batch_shape) * a_rows, ()
    if max(m, n, k, a_rows * a_cols, b_rows * b_cols, m * n) > INT32_LIMIT:
        raise UnsupportedError(f"matmul on CUDA: a matrix of {a_type.shape} @ {b_type.shape} has more than "
                               f"2**31 - 1 elements")
    a = Operand("in0", a_rows, a_cols, not ta, _batch_offset(batch_shape, a_type.shape[:-2], a_rows * a_cols))
    b = Operand("in1", b_rows, b_cols, tb, _batch_offset(batch_shape, b_type.shape[:-2], b_rows * b_cols))
    return Product(math.prod(batch_shape), m, n, k, a, b)


def _batch_offset(batch_shape, own_shape, matrix):
    """C expression: the first element of an operand's matrix for output batch ``batch``,
    its batch axes ``own_shape`` broadcast against ``batch_shape`` (aligned on the right)."""
    if tuple(own_shape) == tuple(batch_shape):
        return f"batch * {matrix}LL" if batch_shape else "0LL"
    terms, stride = [], matrix
    lead = len(batch_shape) - len(own_shape)
    for axis in reversed(range(len(batch_shape))):
        own = own_shape[axis - lead] if axis >= lead else 1
        if own != 1:
            inner = math.prod(batch_shape[axis + 1:])
            index = "batch" if inner == 1 else f"batch / {inner}"
            if axis > 0:
                index = f"({index} % {batch_shape[axis]})"
            terms.append(f"{index} * {stride}LL")
            stride *= own
    return " + ".join(reversed(terms)) or "0LL"


def choose_tile(p):
    """The largest tile whose grid has TARGET_BLOCKS blocks, else the smallest."""
    for tile in TILES:
        if _blocks(p, tile) >= TARGET_BLOCKS:
            return tile
    return TILES[-1]


def _blocks(p, tile):
    return -(-p.n // tile.bn) * -(-p.m // tile.bm) * p.batch


REGISTERS = 65536     # 32-bit registers of an SM (sm_80, sm_90)
MAX_REGISTERS = 128   # a thread's, through __launch_bounds__: two 256-thread blocks per SM

# What the kernels need beyond prelude.h, once per translation unit.
HELPERS = r"""#ifndef KC_GEMM_HELPERS
#define KC_GEMM_HELPERS
// KC_FRAGMENT4(to, from): four consecutive floats of a shared tile into registers ``to``;
// KC_STASH4(to, from): four registers into consecutive floats of a shared tile. One 128-bit
// access under nvcc (the tiles are 16-byte aligned, rows a multiple of 4 floats long, and
// these start at multiples of 4 floats), four race-checked accesses on the host.
#ifdef __CUDACC__
#define KC_ALIGN16 __align__(16)
#define KC_GEMM_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#define KC_FRAGMENT4(to, from) do { const float4 v = *reinterpret_cast<const float4*>(&(from)); \
    (to)[0] = v.x; (to)[1] = v.y; (to)[2] = v.z; (to)[3] = v.w; } while (0)
#define KC_STASH4(to, from) \
    (*reinterpret_cast<float4*>(&(to)) = float4{(from)[0], (from)[1], (from)[2], (from)[3]})
#else
#define KC_ALIGN16
#define KC_GEMM_BOUNDS(threads, blocks)
#define KC_FRAGMENT4(to, from) do { for (int e = 0; e < 4; ++e) (to)[e] = (&(from))[e]; } while (0)
#define KC_STASH4(to, from) do { for (int e = 0; e < 4; ++e) (&(to))[e] = (from)[e]; } while (0)
#endif
#endif"""


# ---- the kernel text ------------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.lines, self.depth = [], 0

    def __call__(self, line):
        self.lines.append("    " * self.depth + line)

    def open(self, head):
        self(head + " {")
        self.depth += 1

    def close(self, tail="}"):
        self.depth -= 1
        self(tail)


def gemm_kernel(ctx, p, tile, store, preamble=""):
    """CudaKernel of template context ``ctx`` computing product ``p`` with ``tile``;
    ``store(acc, column, flat)`` gives the C statement that stores one element of the
    product (the plain store, or a fused epilogue's call), ``preamble`` the source it needs."""
    name, buffers = ctx.name, ctx.buffers
    w = _Writer()
    w.lines += [HELPERS, preamble]
    bounds = f"KC_GEMM_BOUNDS({tile.threads}, {REGISTERS // MAX_REGISTERS // tile.threads})"
    w.open(f'extern "C" __global__ void {bounds} {name}({parameters(buffers)})')
    w(f"KC_SHARED(KC_ALIGN16 float, a_tile, [2][{tile.bk}][{tile.bm + SHARED_PAD}]);")
    w(f"KC_SHARED(KC_ALIGN16 float, b_tile, [2][{tile.bk}][{tile.bn + SHARED_PAD}]);")
    w(f"KC_PER_THREAD(float, acc, [{tile.rm}][{tile.rn}]);")
    for x in (p.a, p.b):
        if x.cols % 4 == 0:   # float4 rows: whether this launch's pointer allows them
            w(f"const bool {x.name}_vector = ((unsigned long long){x.name} & 15) == 0;")
    w.open(f"for (long long batch = blockIdx.z; batch < {p.batch}; batch += gridDim.z)")
    w(f"const long long a_offset = {p.a.offset}, b_offset = {p.b.offset}, c_offset = batch * {p.m * p.n}LL;")
    w.open(f"for (int tile_m = blockIdx.y; tile_m < {-(-p.m // tile.bm)}; tile_m += gridDim.y)")
    w(f"const int m0 = tile_m * {tile.bm}, n0 = blockIdx.x * {tile.bn};")
    _zero(w, tile)
    _steps(w, p, tile)
    _store(w, p, tile, store)
    w.close()   # tile_m
    w.close()   # batch
    w.close()   # the function
    w.lines.append(emulation_entry(name, buffers, barriers=True))
    grid = (-(-p.n // tile.bn), min(-(-p.m // tile.bm), MAX_GRID_YZ), min(p.batch, MAX_GRID_YZ))
    launch = Launch(name, tuple(max(1, g) for g in grid), (tile.threads, 1, 1), barriers=True)
    return CudaKernel(name, "\n".join(w.lines), (launch,), buffers)


def _zero(w, tile):
    w.open("KC_THREADS")
    w("#pragma unroll")
    w(f"for (int i = 0; i < {tile.rm}; ++i)")
    w("#pragma unroll")
    w(f"    for (int j = 0; j < {tile.rn}; ++j) KC_MINE(acc)[i][j] = 0.0f;")
    w.close()


def _steps(w, p, tile):
    """Step s issues slice s's global loads, multiplies slice s - 1 from shared memory while
    they are in flight, then stores slice s into the other buffer: one barrier a step."""
    slices = -(-p.k // tile.bk)
    w.open(f"for (int step = 0; step <= {slices}; ++step)")
    w.open("KC_THREADS")
    _thread_position(w, tile)
    for x, tag in ((p.a, "a"), (p.b, "b")):
        w(f"float {tag}_next[{_vectors(x, tile)[2]}][4];")
    w(f"const bool load = step < {slices};")
    w.open("if (load)")
    _load_slice(w, p, tile, f"step * {tile.bk}")
    w.close()
    w.open("if (step > 0)")
    _multiply(w, tile, "(step - 1) & 1")
    w.close()
    w.open("if (load)")
    _stash_slice(w, p, tile, "step & 1")
    w.close()
    w.close()
    w("KC_SYNC;")
    w.close()


def _store(w, p, tile, store):
    """Each thread's elements of the product, inside C only, through ``store``."""
    w.open("KC_THREADS")
    _thread_position(w, tile)
    w("#pragma unroll")
    w.open(f"for (int i = 0; i < {tile.rm}; ++i)")
    w(f"const int m = m0 + {_spread('i', 'ty', tile.ty)};")
    w.open(f"if (KC_GUARD(m < {p.m}))")   # one row test for the row's stores: fewer live registers
    w("#pragma unroll")
    w.open(f"for (int j = 0; j < {tile.rn}; ++j)")
    w(f"const int n = n0 + {_spread('j', 'tx', tile.tx)};")
    w(f"if (KC_GUARD(n < {p.n})) {store('KC_MINE(acc)[i][j]', 'n', f'c_offset + (long long)m * {p.n} + n')}")
    w.close()
    w.close()
    w.close()
    w.close()


def _spread(register, thread, threads):
    """Row (column) within the block tile of register row ``register`` of thread row
    ``thread``: 4 x 4 pieces, ``threads * 4`` apart."""
    return f"{register} / 4 * {threads * 4} + {thread} * 4 + {register} % 4"


def _thread_position(w, tile):
    w(f"const int tx = threadIdx.x % {tile.tx}, ty = threadIdx.x / {tile.tx};")


def _vectors(x, tile):
    """(stored rows, stored cols) of ``x``'s slice and the float4 groups per thread."""
    outer = tile.bm if x.name == "in0" else tile.bn
    rows, cols = (outer, tile.bk) if x.k_contiguous else (tile.bk, outer)
    return rows, cols, rows * cols // 4 // tile.threads


def _slice_origin(x, k0):
    """(first stored row, first stored column) of ``x``'s slice at k ``k0``."""
    outer = "m0" if x.name == "in0" else "n0"
    return (outer, k0) if x.k_contiguous else (k0, outer)


def _load_slice(w, p, tile, k0):
    """Load op(A) and op(B) at k ``k0`` into registers ``<operand>_next`` (0 outside)."""
    for x, tag in ((p.a, "a"), (p.b, "b")):
        _, cols, groups = _vectors(x, tile)
        row0, col0 = _slice_origin(x, k0)
        w("#pragma unroll")
        w.open(f"for (int g = 0; g < {groups}; ++g)")
        w(f"const int flat = threadIdx.x + g * {tile.threads};")
        w(f"const int row = {row0} + flat / {cols // 4}, col = {col0} + flat % {cols // 4} * 4;")
        w(f"const float* source = {x.name} + {tag}_offset + (long long)row * {x.cols} + col;")
        if x.cols % 4 == 0:
            w.open(f"if ({x.name}_vector)")
            w(f"const float4 v = KC_GUARD(row < {x.rows}) && KC_GUARD(col < {x.cols}) "
              f"? __ldg(reinterpret_cast<const float4*>(source)) : float4{{0.0f, 0.0f, 0.0f, 0.0f}};")
            w(f"{tag}_next[g][0] = v.x; {tag}_next[g][1] = v.y; {tag}_next[g][2] = v.z; {tag}_next[g][3] = v.w;")
            w.close("} else {")
            w.depth += 1
        w("#pragma unroll")
        w(f"for (int e = 0; e < 4; ++e) "
          f"{tag}_next[g][e] = KC_GUARD(row < {x.rows}) && KC_GUARD(col + e < {x.cols}) ? source[e] : 0.0f;")
        if x.cols % 4 == 0:
            w.close()
        w.close()


def _stash_slice(w, p, tile, buffer):
    """Store the registers of ``_load_slice`` into shared buffer ``buffer``, k-major."""
    for x, tag in ((p.a, "a"), (p.b, "b")):
        _, cols, groups = _vectors(x, tile)
        w("#pragma unroll")
        w.open(f"for (int g = 0; g < {groups}; ++g)")
        w(f"const int flat = threadIdx.x + g * {tile.threads};")
        w(f"const int row = flat / {cols // 4}, col = flat % {cols // 4} * 4;")
        if x.k_contiguous:   # transposed into k-major: 4 scalar stores
            w("#pragma unroll")
            w(f"for (int e = 0; e < 4; ++e) {tag}_tile[{buffer}][col + e][row] = {tag}_next[g][e];")
        else:
            w(f"KC_STASH4({tag}_tile[{buffer}][row][col], {tag}_next[g]);")
        w.close()


def _multiply(w, tile, buffer):
    """acc += the slice in shared buffer ``buffer``: per k, rm + rn fragment loads, rm * rn
    FMAs."""
    w("#pragma unroll")
    w.open(f"for (int k = 0; k < {tile.bk}; ++k)")
    w(f"float a[{tile.rm}], b[{tile.rn}];")
    for piece in range(tile.rm // 4):
        w(f"KC_FRAGMENT4(a + {piece * 4}, a_tile[{buffer}][k][{piece * tile.ty * 4} + ty * 4]);")
    for piece in range(tile.rn // 4):
        w(f"KC_FRAGMENT4(b + {piece * 4}, b_tile[{buffer}][k][{piece * tile.tx * 4} + tx * 4]);")
    w("#pragma unroll")
    w(f"for (int i = 0; i < {tile.rm}; ++i)")
    w("#pragma unroll")
    w(f"    for (int j = 0; j < {tile.rn}; ++j) KC_MINE(acc)[i][j] += a[i] * b[j];")
    w.close()


# ---- the lowerings ---------------------------------------------------------------------------------

@lowering("cuda", "matmul")
def matmul(ctx, tile=None):
    """The plain product, stored in out0. ``tile``: forced (tests), else ``choose_tile``."""
    p = product(*ctx.in_types, ctx.out_types[0].shape, ctx.attrs)
    return gemm_kernel(ctx, p, tile or choose_tile(p), lambda acc, column, flat: f"out0[{flat}] = {acc};")


def fused_matmul(ctx, tile=None):
    """A matmul head with its epilogue applied to each element at the store."""
    epilogue = Epilogue(ctx)
    head = ctx.attrs["head_attrs"]
    p = product(*ctx.in_types[:2], head_type(ctx.in_types, ctx.attrs).shape, head)
    return gemm_kernel(ctx, p, tile or choose_tile(p), epilogue.call, epilogue.source)


# head op -> template(ctx) of a fused_contraction with that head (cuda/conv.py adds its heads)
FUSED_HEADS = {"matmul": fused_matmul}


@lowering("cuda", "fused_contraction")
def fused_contraction(ctx):
    template = FUSED_HEADS.get(ctx.attrs["head"])
    if template is None:
        raise UnsupportedError(f"no CUDA kernel for a fused {ctx.attrs['head']} "
                               f"({ctx.node.get('layer') or 'no layer'})")
    return template(ctx)
