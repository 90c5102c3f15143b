"""Products of a few rows by a matrix held in cache: the per-step products of the recurrent
kernels (x_t @ kernel and h_{t-1} @ recurrent_kernel forward; dgates @ recurrent_kernel^T,
dgates @ kernel^T and the weight gradients' h_{t-1}^T @ dgates, x_t^T @ dgates backward),
emitted as explicit vector code.

The SGEMM (gemm.py) packs both operands and allocates its packing buffers on every call; for
a recurrent step (16 rows x 64 x 256 in W4) that costs more than the multiplication, and its
12 x 32 register tile wastes most of a 16-row product. Here the caller packs the weight
matrix once per kernel call (rows ``ldb`` floats apart, each block of columns zero padded to
whole vectors), and ``rows_product`` emits, for one static shape, the function

    void f(i64 rows, i64 K, float* A, float* Bp, float* C)
    for every column vector (bcol, ccol, lanes):
        C[r*ldc + ccol + l] (=, or += with ``accumulate``)
            sum_{k<K} A[r*lda + k*ldk] * Bp[k*ldb + bcol + l]
    for r < rows, l < lanes

(``ldk`` 1: A row-major; ``lda`` 1: A^T, as for the weight gradients). Every full vector
``Bp[k*ldb + bcol .. + width]`` must be inside Bp, its lanes past the valid columns finite.

The column vectors come in *chunks*: ``count`` chunks alike (``chunk`` lists each vector's
(bcol, ccol) in the first, ``step`` is what the next chunk adds to both) and then one
``tail`` chunk of (bcol, ccol, lanes) vectors; vectors with fewer than ``width`` lanes are
read and written with masked loads and stores, so nothing outside C's valid columns is
touched. A chunk's vectors are taken a few at a time (``tile_shape``), each group for a few
rows at a time, with one accumulator per row and vector: per k, one load per vector and one
broadcast per row feed rows x vectors FMAs, and enough independent accumulators hide the
FMA latency. ``rows`` lists the row counts a call may have (the parts of a batch differ by
one row at most): each has its own static cut into tiles (``tile_plan``), and a call with
another count computes nothing. The sum over k runs in order k = 0..K-1 with a fused
multiply-add per term.
"""
import hashlib
from dataclasses import dataclass

import llvmlite.ir as ir

from .irutil import c64, f32, for_range, get_function, i1, i32, i64, void
from .jit import host_has_avx512, vector_width_attrs

fptr = f32.as_pointer()


PACK_NAME = "kc_pack_gates"
#: void kc_pack_gates(float* src, float* dst, i64 n, i64 G, i64 U, i64 Up, i64 cols, i64 transposed)
PACK_FN_TYPE = ir.FunctionType(void, [fptr, fptr, i64, i64, i64, i64, i64, i64])


def emit_pack(module):
    """Add ``kc_pack_gates`` to ``module`` (the support library's): packs a matrix ``src``
    (n, G*U) whose columns are G gates of U units for the products,
    ``dst[r, g*Up + j] = src[r, g*U + j]`` (n rows of G*Up), or with ``transposed``
    ``dst[g*Up + k, c] = src[c, g*U + k]`` (G*Up rows of ``cols`` >= n), zeros in the
    padding. The sizes are arguments: compiled once, for every kernel's matrices (emitted
    into each kernel with its static sizes, LLVM unrolled the copies in full and took half
    the gradient kernel's compile time over them)."""
    fn = ir.Function(module, PACK_FN_TYPE, name=PACK_NAME)
    src, dst, n, G, U, Up, cols, transposed = fn.args
    for a in (src, dst):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    GU = b.mul(G, U)
    zero = ir.Constant(f32, 0.0)
    gep = lambda p, i: b.gep(p, [i], inbounds=True)  # noqa: E731
    with b.if_else(b.icmp_signed("!=", transposed, c64(0))) as (t_case, f_case):
        with t_case:
            with for_range(b, G, name="g") as g, for_range(b, Up, name="k") as k, \
                    for_range(b, cols, name="c") as c:
                inside = b.and_(b.icmp_signed("<", k, U), b.icmp_signed("<", c, n))
                at = b.select(inside, b.add(b.mul(c, GU), b.add(b.mul(g, U), k)), c64(0))
                out = b.add(b.mul(b.add(b.mul(g, Up), k), cols), c)
                b.store(b.select(inside, b.load(gep(src, at)), zero), gep(dst, out))
        with f_case:
            with for_range(b, n, name="r") as r, for_range(b, G, name="g") as g, for_range(b, Up, name="j") as j:
                inside = b.icmp_signed("<", j, U)
                at = b.select(inside, b.add(b.mul(r, GU), b.add(b.mul(g, U), j)), c64(0))
                out = b.add(b.mul(r, b.mul(G, Up)), b.add(b.mul(g, Up), j))
                b.store(b.select(inside, b.load(gep(src, at)), zero), gep(dst, out))
    b.ret_void()
    return fn


def host_vector_width():
    """Floats per vector register of this host: 16 with AVX-512, else 8."""
    return 16 if host_has_avx512() else 8


def vector_registers(width):
    """How many ``width``-float vectors the host's vector registers hold at once."""
    bits, count = (512, 32) if host_has_avx512() else (256, 16)
    return count // max(1, width * 32 // bits)


def tile_shape(width):
    """(column vectors, rows) of a register tile: rows x vectors accumulators, the weight
    vectors and a broadcast in the registers. With 16 registers (AVX2) 2 x 6: 12 accumulators
    (the FMA latency of 4-5 cycles times 2 FMA pipes needs 8-10) from 8 loads per 12 FMAs; with
    32 (AVX-512) 4 x 6."""
    vectors = 2 if vector_registers(width) < 32 else 4
    return vectors, tile_rows(vectors, width)


def tile_rows(vectors, width):
    """Rows per register tile for ``vectors`` column vectors: the accumulators (rows x
    vectors), the loaded weight vectors and a broadcast must fit the registers."""
    return max(1, min(6, (vector_registers(width) - vectors - 1) // vectors))


def vector_type(width):
    return ir.VectorType(f32, width)


def lane_mask(width, lanes):
    """The <width x i1> constant with the first ``lanes`` lanes on, or None for all of them."""
    if lanes >= width:
        return None
    return ir.Constant(ir.VectorType(i1, width), [1] * lanes + [0] * (width - lanes))


def vload(b, ptr, width, mask=None):
    """Load ``width`` floats at float* ``ptr`` (only the lanes of ``mask``; the others are 0)."""
    vt = vector_type(width)
    vp = b.bitcast(ptr, vt.as_pointer())
    if mask is None:
        return b.load(vp, align=4)
    fn = get_function(b.module, f"llvm.masked.load.v{width}f32.p0", vt, [vt.as_pointer(), i32, mask.type, vt])
    return b.call(fn, [vp, ir.Constant(i32, 4), mask, ir.Constant(vt, [0.0] * width)])


def vstore(b, value, ptr, mask=None):
    """Store vector ``value`` at float* ``ptr`` (only the lanes of ``mask``)."""
    vt = value.type
    vp = b.bitcast(ptr, vt.as_pointer())
    if mask is None:
        b.store(value, vp, align=4)
        return
    fn = get_function(b.module, f"llvm.masked.store.v{vt.count}f32.p0", void, [vt, vt.as_pointer(), i32, mask.type])
    b.call(fn, [value, vp, ir.Constant(i32, 4), mask])


def splat(b, x, width):
    vt = vector_type(width)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width))


def tile_plan(rows, mr):
    """How ``rows`` rows are cut into tiles of at most ``mr``: [(rows per tile, tiles)], in
    order. Whole tiles while 2 mr or more are left, then the rest as one tile, or as two
    nearly equal ones when it exceeds mr (16 rows in tiles of 6: 6, 5, 5, not 6, 6, 4: more
    accumulators at work)."""
    plan, left = [], rows
    while left >= 2 * mr:
        left -= mr
        plan.append(mr)
    plan += [(left + 1) // 2, left // 2] if left > mr else [left] if left else []
    runs = []
    for size in plan:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return [tuple(r) for r in runs]


@dataclass(frozen=True)
class Shape:
    """The static shape of one rows product (see the module docstring)."""
    rows: tuple
    lda: int
    ldb: int
    ldc: int
    width: int
    chunk: tuple          # ((bcol, ccol), ...) of the first of the ``count`` full chunks
    step: tuple           # (bcol step, ccol step) from one full chunk to the next
    count: int
    tail: tuple = ()      # ((bcol, ccol, lanes), ...)
    accumulate: bool = False
    ldk: int = 1

    def vectors(self):
        """Every column vector: (bcol, ccol, lanes)."""
        return [(bc + c * self.step[0], cc + c * self.step[1], self.width)
                for c in range(self.count) for bc, cc in self.chunk] + list(self.tail)


def rows_product(module, shape):
    """The function computing ``shape`` (emitted into ``module`` once per shape)."""
    name = "kc_rows_product." + hashlib.sha256(repr(shape).encode()).hexdigest()[:16]
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(void, [i64, i64, fptr, fptr, fptr]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # a call per step costs nothing; inlined, the kernels' LLVM
    vector_width_attrs(fn)         # optimisation took 5-10x longer (one huge function)
    for a in fn.args[2:]:
        a.add_attribute("noalias")
    rows, K, A, Bp, C = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with b.if_then(b.icmp_signed(">", K, c64(0))):
        _Emitter(b, shape, K, A, Bp, C).run(rows)
    b.ret_void()
    return fn


class _Emitter:
    def __init__(self, b, shape, K, A, Bp, C):
        self.b, self.s, self.K, self.A, self.Bp, self.C = b, shape, K, A, Bp, C
        self.fma = get_function(b.module, f"llvm.fma.v{shape.width}f32", vector_type(shape.width),
                                [vector_type(shape.width)] * 3)

    def run(self, rows):
        b, s = self.b, self.s
        done = b.function.append_basic_block("done")
        switch = b.switch(rows, done)
        for n in s.rows:
            block = b.function.append_basic_block(f"rows{n}")
            switch.add_case(c64(n), block)
            b.position_at_end(block)
            if s.count:
                with for_range(b, s.count, name="chunk") as c:
                    bstep, cstep = b.mul(c, c64(s.step[0])), b.mul(c, c64(s.step[1]))
                    self.tiles(n, [(bcol, ccol, s.width) for bcol, ccol in s.chunk], bstep, cstep)
            if s.tail:
                self.tiles(n, list(s.tail), c64(0), c64(0))
            b.branch(done)
        b.position_at_end(done)

    def tiles(self, rows, cols, boff, coff):
        """Every row of one chunk, its vectors a group of ``tile_shape`` at a time."""
        per_tile = tile_shape(self.s.width)[0]
        for v in range(0, len(cols), per_tile):
            self.row_tiles(rows, cols[v:v + per_tile], boff, coff)

    def row_tiles(self, rows, cols, boff, coff):
        """The tiles of ``tile_plan``: a loop over each run of equal tiles."""
        b = self.b
        first = 0
        for size, count in tile_plan(rows, tile_rows(len(cols), self.s.width)):
            if count == 1:
                self.tile(size, c64(first), cols, boff, coff)
            else:
                with for_range(b, first + count * size, start=first, step=size, name="rt") as r0:
                    self.tile(size, r0, cols, boff, coff)
            first += count * size

    def tile(self, nrows, r0, cols, boff, coff):
        b, s = self.b, self.s
        W = s.width
        gep = lambda p, i: b.gep(p, [i], inbounds=True)  # noqa: E731
        a_rows = [gep(self.A, b.mul(b.add(r0, c64(i)), c64(s.lda))) for i in range(nrows)]
        b_cols = [gep(self.Bp, b.add(boff, c64(bcol))) for bcol, _, _ in cols]
        c_at = [[gep(self.C, b.add(b.mul(b.add(r0, c64(i)), c64(s.ldc)), b.add(coff, c64(ccol))))
                 for _, ccol, _ in cols] for i in range(nrows)]
        masks = [lane_mask(W, lanes) for _, _, lanes in cols]
        zero = ir.Constant(vector_type(W), [0.0] * W)
        init = [[vload(b, c_at[i][v], W, masks[v]) if s.accumulate else zero for v in range(len(cols))]
                for i in range(nrows)]
        # for k in 0..K-1: the accumulators are loop-carried values (phis), kept in registers
        pre = b.block
        loop = b.function.append_basic_block("k")
        after = b.function.append_basic_block("k.done")
        b.branch(loop)
        b.position_at_end(loop)
        k = b.phi(i64, name="k")
        k.add_incoming(c64(0), pre)
        acc = [[b.phi(vector_type(W)) for _ in cols] for _ in range(nrows)]
        for i in range(nrows):
            for v in range(len(cols)):
                acc[i][v].add_incoming(init[i][v], pre)
        krow = b.mul(k, c64(s.ldb))
        weights = [vload(b, gep(p, krow), W) for p in b_cols]
        kcol = k if s.ldk == 1 else b.mul(k, c64(s.ldk))
        new = []
        for i in range(nrows):
            a = splat(b, b.load(gep(a_rows[i], kcol)), W)
            new.append([b.call(self.fma, [a, w, acc[i][v]]) for v, w in enumerate(weights)])
        k1 = b.add(k, c64(1))
        k.add_incoming(k1, loop)
        for i in range(nrows):
            for v in range(len(cols)):
                acc[i][v].add_incoming(new[i][v], loop)
        b.cbranch(b.icmp_signed("<", k1, self.K), loop, after)
        b.position_at_end(after)
        for i in range(nrows):
            for v in range(len(cols)):
                vstore(b, new[i][v], c_at[i][v], masks[v])
