"""A tiled, vectorised, multi-threaded SGEMM emitted as LLVM IR.

:func:`emit_gemm` adds to an ``llvmlite.ir.Module``::

    void kc_sgemm(i32 trans_a, i32 trans_b, i64 M, i64 N, i64 K, float alpha,
                  float* A, i64 lda, float* B, i64 ldb, float beta,
                  float* C, i64 ldc)

with BLAS row-major semantics ``C = alpha * op(A) @ op(B) + beta * C`` where
``op(X)`` is ``X`` (``trans_x == 0``) or ``X^T`` (``trans_x != 0``): ``op(A)`` is
M x K (``A`` is stored M x K, or K x M when ``trans_a``, rows ``lda`` floats
apart), ``op(B)`` is K x N (stored K x N, or N x K when ``trans_b``, rows ``ldb``
apart), ``C`` is M x N with rows ``ldc`` apart. ``beta == 0`` never reads C
(so C may hold NaN). ``M <= 0`` or ``N <= 0``: nothing happens. ``K <= 0`` or
``alpha == 0``: ``C = beta * C`` (zeros when ``beta == 0``).

Structure (the Goto/BLIS loop nest, see docs/codegen-llvm.md)::

    for jc in 0..N step NC:                 B panel  KC x NC   (L2/L3)
      for pc in 0..K step KC':               (K in equal blocks KC' <= KC)
        pack B[pc:pc+kc, jc:jc+nc] -> Bp    (NR-wide micro-panels, zero padded)
        for ic in 0..M step MC:             A block  MC x KC   (L2)
          pack A[ic:ic+mc, pc:pc+kc] -> Ap  (MR-tall micro-panels, zero padded)
          for jr in 0..nc step NR:          B micro-panel KC x NR (L1)
            for ir in 0..mc step MR:
              micro-kernel: MR x NR tile of C += Ap_ir . Bp_jr

Packing handles the transposition, so the micro-kernel sees one layout: for
each k, MR consecutive floats of A and NR consecutive floats of B. The
micro-kernel keeps the MR x NR tile in MR * NR/W vector registers of W floats
(AVX-512: 12 x 32 -> 24 zmm accumulators; AVX2: 6 x 16 -> 12 ymm, see
:func:`register_tile`), broadcasts one A value per row and issues
``llvm.fma.v<W>f32`` (declared by hand). Edge tiles are computed on the
zero-padded panels and written back with scalar code for the valid
``mr x nr`` part only: nothing outside the matrices is ever read or written.

Packing buffers: one ``malloc`` per call (``malloc``/``free`` declared in the
IR) on the calling thread, holding every slice's A block and B panel, sized for
the actual problem (``min(M, MC) x min(K, KC)`` and ``min(K, KC) x min(N, NC)``,
rounded up to whole micro-panels) and aligned to 64 bytes by hand. No workspace
argument is needed. Tiles with at most W valid columns (of a wider tile) run a
narrow k loop.

Epilogue hook: ``<name>_epilogue`` (emitted when asked) takes four more arguments,
``void (*epilogue)(i8* context, i64 row0, i64 rows, i64 col0, i64 cols, float* product,
i64 ld)``, its ``i8* context``, a ``prefetch`` function of the same type (or null) and an
``i32 private_product``, and calls the epilogue for each C block ``[row0, row0+rows) x
[col0, col0+cols)`` as soon as that block is final (after the last KC step), on the thread
that computed it, while the block is still in L2: a fused contraction finishes its product
(bias, activation, optimizer update) there instead of in a second, single-threaded pass
over memory. Every element of C is in exactly one such block; ``product`` points at the
block's first element of the product, rows ``ld`` floats apart. With ``prefetch``, the
blocks are finished in strips and each tile first asks for its share of the next strip's
epilogue state (see _emit_serial). A nonzero ``private_product`` says that nothing but the
epilogue reads the product (an optimizer update fused into a weight gradient): a product
whose K fits one KC block (and beta is 0) is then computed strip by strip into the
workspace, and C is left as it was.

Narrow products (N <= NR) read A in place instead of packing it (_emit_narrow).

Threads: when ``M*N*K >= parallel_min_mnk`` (or the operands and product hold
``parallel_min_floats`` floats) the work is split into
``nthreads`` slices of whole NR column blocks (or MR row blocks when M is the
larger dimension); each slice is an independent GEMM with its own part of the packing
buffer, run by :mod:`.threads` (pinned pthreads created inside the generated
code, see there). When K is at least ``SPLIT_K_RATIO`` times the split dimension (a weight
gradient over many rows), the slices are ranges of K instead: slice 0 accumulates into C,
the others into partial products the calling thread adds into C after the join, and the
epilogue then sees C as one block.
"""
from __future__ import annotations


import llvmlite.ir as ir

from . import threads as _threads
from .irutil import for_range

__all__ = ["BATCHED_GEMM_FN_TYPE", "EPILOGUE_FN_TYPE", "GEMM_ARG_TYPES", "GEMM_EPILOGUE_FN_TYPE", "GEMM_FN_TYPE",
           "emit_gemm", "gemm_ctypes_argtypes"]

i1 = ir.IntType(1)
i8 = ir.IntType(8)
i32 = ir.IntType(32)
i64 = ir.IntType(64)
f32 = ir.FloatType()
fptr = f32.as_pointer()
i8p = i8.as_pointer()
void = ir.VoidType()

#: (trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
GEMM_ARG_TYPES = (i32, i32, i64, i64, i64, f32, fptr, i64, fptr, i64, f32, fptr, i64)
GEMM_FN_TYPE = ir.FunctionType(void, list(GEMM_ARG_TYPES))
_ARG_NAMES = ("trans_a", "trans_b", "M", "N", "K", "alpha", "A", "lda", "B", "ldb", "beta", "C", "ldc")
#: void epilogue(i8* context, i64 row0, i64 rows, i64 col0, i64 cols, float* product, i64 ld)
EPILOGUE_FN_TYPE = ir.FunctionType(void, [i8p, i64, i64, i64, i64, fptr, i64])
#: the epilogue, its context, the function that prefetches a block's epilogue operands, and
#: whether only the epilogue reads the product (the module docstring)
_EPI_ARG_TYPES = (EPILOGUE_FN_TYPE.as_pointer(), i8p, EPILOGUE_FN_TYPE.as_pointer(), i32)
_EPI_ARG_NAMES = ("epilogue", "context", "prefetch", "private_product")
#: the GEMM arguments, then the epilogue and its context
GEMM_EPILOGUE_FN_TYPE = ir.FunctionType(void, list(GEMM_ARG_TYPES) + list(_EPI_ARG_TYPES))

# Default blocking for the 2-core AVX-512 machine (48 KiB L1d, 1 MiB L2 / core):
# B micro-panel KC*NR*4 = 32 KiB in L1, A block MC*KC*4 = 144 KiB in L2,
# B panel KC*NC*4 = 512 KiB in L2. MR/NR are those of an AVX-512 host; see
# register_tile() for the host's.
#: (trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch)
BATCHED_GEMM_ARG_TYPES = (i32, i32, i64, i64, i64, f32, fptr, i64, i64, fptr, i64, i64, f32, fptr, i64, i64, i64)
BATCHED_GEMM_FN_TYPE = ir.FunctionType(void, list(BATCHED_GEMM_ARG_TYPES))
_BATCHED_ARG_NAMES = ("trans_a", "trans_b", "M", "N", "K", "alpha", "A", "lda", "stride_a", "B", "ldb", "stride_b",
                      "beta", "C", "ldc", "stride_c", "batch")

DEFAULT_MR = 12
DEFAULT_NR = 32
DEFAULT_KC = 256
DEFAULT_MC = 144
DEFAULT_NC = 512
# Below this M*N*K the call stays on one thread: the split costs one extra packing of the
# shared operand and ~1 us of handing the parts to the pool's helper threads (threads.py; it
# was 15-25 us when each call started its threads and the threshold was 2^23). Measured on the
# Zen 4 host with the pool: the dense layers of W2/W3 (64 x 576 x 64 and their gradients) run
# 2-2.6x faster on two cores (72 -> 32 us).
DEFAULT_PARALLEL_MIN_MNK = 1 << 20
# ... unless its operands and product hold this many floats: a product with a short side
# (W5's 256 x 10 x 1024 output layer and its gradients, 2.6e6 multiply-adds) is bound by
# moving its 1 MiB operand, which two cores do faster than one
DEFAULT_PARALLEL_MIN_FLOATS = 1 << 18


def register_tile():
    """(vector floats, MR, NR, vector registers) of the micro-kernel for this host.

    With AVX-512: <16 x float> vectors, a 12 x 32 tile (24 of the 32 zmm registers
    accumulate). Without it (AVX2, 16 ymm registers) a <16 x float> would be split into
    two ymm halves and the 12 x 32 tile would need 48 accumulators: it spilled and ran at
    half of OpenBLAS's speed on a Zen 2 host (54 against 97 GFLOP/s on one core). There
    the tile is 6 x 16 in <8 x float> vectors: 12 accumulators, 2 B vectors and the
    broadcast A value (the Haswell-class kernel of OpenBLAS and BLIS)."""
    from .jit import host_has_avx512
    return (16, 12, 32, 32) if host_has_avx512() else (8, 6, 16, 16)


def gemm_ctypes_argtypes():
    """ctypes argtypes matching ``kc_sgemm`` (pointers as c_void_p integers)."""
    import ctypes

    c = ctypes
    return (c.c_int32, c.c_int32, c.c_int64, c.c_int64, c.c_int64, c.c_float,
            c.c_void_p, c.c_int64, c.c_void_p, c.c_int64, c.c_float, c.c_void_p, c.c_int64)


# ----------------------------------------------------------------- IR helpers
def _c64(v):
    return ir.Constant(i64, v)


def _cf(v):
    return ir.Constant(f32, v)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _gep(b, p, idx):
    if isinstance(idx, int):
        idx = _c64(idx)
    return b.gep(p, [idx], inbounds=True)


def _vload(b, p, align, vw):
    return b.load(b.bitcast(p, ir.VectorType(f32, vw).as_pointer()), align=align)


def _vstore(b, v, p, align):
    b.store(v, b.bitcast(p, v.type.as_pointer()), align=align)


def _splat(b, x, vw):
    undef = ir.Constant(ir.VectorType(f32, vw), ir.Undefined)
    ins = b.insert_element(undef, x, ir.Constant(i32, 0))
    return b.shuffle_vector(ins, undef, ir.Constant(ir.VectorType(i32, vw), [0] * vw))


def _get_fn(module, name, fnty):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
    return fn


def _fma(module, vw):
    # declare_intrinsic() fails for the vector FMA in llvmlite 0.50: declare by hand.
    vt = ir.VectorType(f32, vw)
    return _get_fn(module, f"llvm.fma.v{vw}f32", ir.FunctionType(vt, [vt, vt, vt]))


def _malloc(module):
    return _get_fn(module, "malloc", ir.FunctionType(i8p, [i64]))


def _free(module):
    return _get_fn(module, "free", ir.FunctionType(void, [i8p]))


def _internal(module, name, fnty, argnames):
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "internal"
    for a, n in zip(fn.args, argnames):
        a.name = n
    return fn


# ----------------------------------------------------------------- pieces
def _emit_pack(module, name, R, vw):
    """``void pack(i1 contig, i64 nrows, i64 kc, float* X, i64 ldx, float* dst)``.

    Packs the nrows x kc sub-matrix ``S(r, k) = contig ? X[k*ldx + r] : X[r*ldx + k]``
    into micro-panels of R rows: panel p holds ``dst[p*R*kc + k*R + i] = S(p*R+i, k)``,
    zero for ``p*R+i >= nrows``.
    """
    fn = _internal(module, name, ir.FunctionType(void, [i1, i64, i64, fptr, i64, fptr]),
                   ("contig", "nrows", "kc", "X", "ldx", "dst"))
    contig, nrows, kc, X, ldx, dst = fn.args
    for a in (X, dst):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = _cf(0.0)
    Rc = _c64(R)
    npanels = b.sdiv(b.add(nrows, _c64(R - 1)), Rc, name="npanels")
    with b.if_else(contig) as (then, otherwise):
        with then:
            # S(r0+i, k) = X[k*ldx + r0 + i]: R contiguous floats per k. Row k of X is read
            # whole before row k+1: panel by panel, consecutive k are ldx floats apart, and with
            # a power-of-two ldx (a 1024-wide activation) every load fell in the same cache
            # set: the transposed A of a 1024 x 10 x 256 weight gradient packed 2.3x slower.
            nfull = b.sdiv(nrows, Rc, name="nfull")
            with for_range(b, kc, name="k") as k:
                srow = _gep(b, X, b.mul(k, ldx))
                with for_range(b, nfull, name="p") as p:
                    r0 = b.mul(p, Rc)
                    s = _gep(b, srow, r0)
                    dk = _gep(b, dst, b.add(b.mul(r0, kc), b.mul(k, Rc)))
                    # whole vectors, and the rest (R = 12 of AVX-512's MR) as one
                    # narrower vector the backend splits into legal halves
                    for v in range(0, R, vw):
                        w = min(vw, R - v)
                        _vstore(b, _vload(b, _gep(b, s, v), 4, w), _gep(b, dk, v), 4)
            # the last, partial panel: its rows, then zeros
            r0 = b.mul(nfull, Rc)
            rows = b.sub(nrows, r0)
            with b.if_then(b.icmp_signed(">", rows, _c64(0))):
                d = _gep(b, dst, b.mul(r0, kc))
                with for_range(b, kc, name="k") as k:
                    s = _gep(b, X, b.add(b.mul(k, ldx), r0))
                    dk = _gep(b, d, b.mul(k, Rc))
                    with for_range(b, rows, name="i") as i:
                        b.store(b.load(_gep(b, s, i)), _gep(b, dk, i))
                    with for_range(b, Rc, start=rows, name="iz") as i:
                        b.store(zero, _gep(b, dk, i))
        with otherwise:
            with for_range(b, npanels, name="p") as p:
                r0 = b.mul(p, Rc, name="r0")
                rows = _min(b, Rc, b.sub(nrows, r0))
                d = _gep(b, dst, b.mul(r0, kc))
                full_k = b.mul(b.sdiv(kc, _c64(vw)), _c64(vw))
                with b.if_else(b.icmp_signed("==", rows, Rc)) as (whole, partial):
                    with whole:
                        # vw x vw blocks (the panel's rows in groups of at most vw, vw values of
                        # k) transposed in registers: a vector load per row, a vector store per
                        # k. Stored lane by lane (as the partial panel still is), W5's forward
                        # products ran 2-3 % and its 1024 x 1024 input gradient 5 % slower, TX's
                        # step 4 % (the two SGEMMs alternating in one process). Rows a power of
                        # two apart share a cache set, but each load uses its line at once: at
                        # worst a misaligned load's second line comes again from L2.
                        with for_range(b, full_k, step=vw, name="kb") as k:
                            for g0 in range(0, R, vw):
                                gs = min(vw, R - g0)
                                vecs = [_vload(b, _gep(b, X, b.add(b.mul(b.add(r0, _c64(g0 + i)), ldx), k)), 4, vw)
                                        for i in range(gs)]
                                cols = _transpose(b, vecs + [ir.Constant(vecs[0].type, None)] * (vw - gs), vw)
                                for j in range(vw):
                                    col = cols[j] if gs == vw else b.shuffle_vector(
                                        cols[j], cols[j], ir.Constant(ir.VectorType(i32, gs), list(range(gs))))
                                    _vstore(b, col, _gep(b, d, b.add(b.mul(b.add(k, _c64(j)), Rc), _c64(g0))), 4)
                        _pack_rows(b, X, ldx, r0, Rc, d, Rc, full_k, kc, vw, vector_part=False)
                    with partial:
                        _pack_rows(b, X, ldx, r0, rows, d, Rc, full_k, kc, vw, vector_part=True)
                        with for_range(b, Rc, start=rows, name="iz") as i:
                            with for_range(b, kc, name="kz") as k:
                                b.store(zero, _gep(b, d, b.add(b.mul(k, Rc), i)))
    b.ret_void()
    return fn


def _transpose(b, vecs, vw):
    """The vw x vw transpose of ``vecs`` (vw vectors of vw floats, row i = vecs[i]): vector j
    holds element j of every row. log2(vw) rounds, each swapping the off-diagonal blocks of
    every 2h x 2h block (h = vw/2, ..., 1) with one two-source shuffle per vector."""
    v = list(vecs)
    h = vw // 2
    while h >= 1:
        low = ir.Constant(ir.VectorType(i32, vw), [l if l & h == 0 else vw + l - h for l in range(vw)])
        high = ir.Constant(ir.VectorType(i32, vw), [l + h if l & h == 0 else vw + l for l in range(vw)])
        for i in range(vw):
            if i & h == 0:
                v[i], v[i + h] = b.shuffle_vector(v[i], v[i + h], low), b.shuffle_vector(v[i], v[i + h], high)
        h //= 2
    return v


def _pack_rows(b, X, ldx, r0, rows, d, Rc, full_k, kc, vw, vector_part):
    """Rows [r0, r0 + rows) of a transposing pack one at a time: ``d[k*R + i] = X[(r0+i)*ldx + k]``
    for k in [0, kc) (``vector_part``: the first full_k in vectors, stored lane by lane), else
    only k in [full_k, kc). Row i is contiguous in k, and is read whole before the next: R rows
    read side by side are R streams ldx floats apart, which with a power-of-two ldx all fall in
    one cache set and evict each other (a 1024-wide weight's transpose packed 1.9x slower)."""
    with for_range(b, rows, name="i") as i:
        s = _gep(b, X, b.mul(b.add(r0, i), ldx))
        di = _gep(b, d, i)
        if vector_part:
            with for_range(b, full_k, step=vw, name="k") as k:
                v = _vload(b, _gep(b, s, k), 4, vw)
                for j in range(vw):
                    b.store(b.extract_element(v, ir.Constant(i32, j)), _gep(b, di, b.mul(b.add(k, _c64(j)), Rc)))
        with for_range(b, kc, start=full_k, name="kt") as k:
            b.store(b.load(_gep(b, s, k)), _gep(b, di, b.mul(k, Rc)))


# A packed panel's last tile of rows, when M is not a multiple of MR, takes the loop over the
# fewest of these rows that holds it instead of all MR: W5's 256 rows are 21 tiles of 12 and
# one of 4, whose 12-row loop made a 256-row product as slow as a 264-row one (2.67 against
# 2.69 ms for 256 x 1024 x 1024 on both cores; 252 rows 2.55). Each loop here adds to the
# support library that every cold start builds (an 8-row one too: 0.85 -> 0.93 s; the 4-row
# one alone: 0.88 -> 0.90 s), so only the 4-row one, which the products of 256, 784 and 1024
# rows (and 4096: TX) end with.
SHORT_TILE_ROWS = (4,)


def _emit_microkernel(module, name, MR, NR, VW, direct_a=False):
    """``void ukr(i64 kc, float* Ap, float* Bp, float* C, i64 ldc, i64 mr, i64 nr,
    float alpha, float beta, i1 load_c)``.

    acc = sum_k Ap[k*MR + i] * Bp[k*NR + j] over the MR x NR tile (the panels are
    zero padded), then for the valid mr x nr part:
    ``C = alpha*acc + beta*C`` if load_c else ``C = alpha*acc`` (C not read).
    Tiles with ``nr <= VW`` (narrow N edges, e.g. 10 output classes) run a
    one-vector loop that skips the FMAs on the padding columns, and a packed tile of at
    most 4 valid rows (SHORT_TILE_ROWS) a loop over that many rows of the panel.

    ``direct_a``: A is read where it lies instead of from a packed panel —
    ``void ukr(i64 kc, float* A, i64 row_stride, i64 k_stride, float* Bp, ...)`` with
    element (i, k) at ``A[i*row_stride + k*k_stride]``; rows past ``mr`` read row
    ``mr - 1`` again (their sums are never stored), so only the valid rows are touched.
    """
    NV = NR // VW
    vt = ir.VectorType(f32, VW)
    fma = _fma(module, VW)
    a_args = [fptr, i64, i64] if direct_a else [fptr]
    a_names = ("A", "row_stride", "k_stride") if direct_a else ("Ap",)
    fn = _internal(module, name,
                   ir.FunctionType(void, [i64] + a_args + [fptr, fptr, i64, i64, i64, f32, f32, i1]),
                   ("kc",) + a_names + ("Bp", "C", "ldc", "mr", "nr", "alpha", "beta", "load_c"))
    kc, *a_vals, Bp, C, ldc, mr, nr, alpha, beta, load_c = fn.args
    Ap = a_vals[0]
    for a in (Ap, Bp, C):
        a.add_attribute("noalias")
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    if direct_a:
        row_stride, k_stride = a_vals[1:]
        a_rows = [_gep(b, Ap, b.mul(_min(b, _c64(i), b.sub(mr, _c64(1))), row_stride)) for i in range(MR)]
    zero_v = ir.Constant(vt, [0.0] * VW)
    tile = b.alloca(ir.ArrayType(f32, MR * NR), name="tile")
    tile.align = 64
    tp = b.bitcast(tile, fptr)
    alpha_v = _splat(b, alpha, VW)
    beta_v = _splat(b, beta, VW)
    _prefetch_tile(module, b, C, ldc, mr, nr, MR)

    def kloop(nv, tag, rows=MR):
        """The k loop over nv vectors for the first ``rows`` rows of the panel; returns the
        final accumulators (the builder is left in the loop's exit block)."""
        pre = b.block
        loop = fn.append_basic_block(f"kloop{tag}")
        after = fn.append_basic_block(f"store{tag}")
        b.branch(loop)
        b.position_at_end(loop)
        k = b.phi(i64, name="k")
        pa = b.phi(fptr, name="pa")
        pb = b.phi(fptr, name="pb")
        accs = [[b.phi(vt, name=f"acc{i}_{j}") for j in range(nv)] for i in range(rows)]
        k.add_incoming(_c64(0), pre)
        pa.add_incoming(Ap, pre)
        pb.add_incoming(Bp, pre)
        for row in accs:
            for acc in row:
                acc.add_incoming(zero_v, pre)
        bv = [_vload(b, _gep(b, pb, j * VW), 64, VW) for j in range(nv)]
        new = []
        for i in range(rows):
            a_ptr = _gep(b, a_rows[i], b.mul(k, k_stride)) if direct_a else _gep(b, pa, i)
            av = _splat(b, b.load(a_ptr, name=f"a{i}"), VW)
            new.append([b.call(fma, [av, bv[j], accs[i][j]]) for j in range(nv)])
        k1 = b.add(k, _c64(1))
        k.add_incoming(k1, loop)
        pa.add_incoming(pa if direct_a else _gep(b, pa, MR), loop)
        pb.add_incoming(_gep(b, pb, NR), loop)
        for i in range(rows):
            for j in range(nv):
                accs[i][j].add_incoming(new[i][j], loop)
        b.cbranch(b.icmp_signed("<", k1, kc), loop, after)
        b.position_at_end(after)
        return new

    def spill_writeback(res, nv):
        # partial tile: spill the accumulators, then scalar updates of the valid part
        for i in range(len(res)):
            for j in range(nv):
                _vstore(b, res[i][j], _gep(b, tp, i * NR + j * VW), 64)
        with for_range(b, mr, name="ei") as ii:
            crow = _gep(b, C, b.mul(ii, ldc))
            trow = _gep(b, tp, b.mul(ii, _c64(NR)))
            with for_range(b, nr, name="ej") as jj:
                t = b.fmul(b.load(_gep(b, trow, jj)), alpha)
                pc = _gep(b, crow, jj)
                with b.if_else(load_c) as (ld, nold):
                    with ld:
                        b.store(b.fadd(t, b.fmul(b.load(pc), beta)), pc)
                    with nold:
                        b.store(t, pc)

    def vector_writeback(res):
        # whole NR-wide rows: vector loads/stores, rows guarded by i < mr
        for i in range(len(res)):
            row_ctx = b.if_then(b.icmp_signed(">", mr, _c64(i)), likely=True) if i else None
            if row_ctx is not None:
                row_ctx.__enter__()
            crow = _gep(b, C, b.mul(_c64(i), ldc))
            with b.if_else(load_c) as (ld, nold):
                with ld:
                    for j in range(NV):
                        p = _gep(b, crow, j * VW)
                        cv = _vload(b, p, 4, VW)
                        _vstore(b, b.call(fma, [res[i][j], alpha_v, b.fmul(cv, beta_v)]), p, 4)
                with nold:
                    for j in range(NV):
                        _vstore(b, b.fmul(res[i][j], alpha_v), _gep(b, crow, j * VW), 4)
            if row_ctx is not None:
                row_ctx.__exit__(None, None, None)

    if NV > 1:
        narrow = b.icmp_signed("<=", nr, _c64(VW))
        with b.if_then(narrow, likely=False):
            res = kloop(1, ".narrow")
            spill_writeback(res, 1)
            b.ret_void()
    def full_width_or_edge(res):
        with b.if_else(b.icmp_signed("==", nr, _c64(NR))) as (vec_path, edge_path):
            with vec_path:
                vector_writeback(res)
            with edge_path:
                spill_writeback(res, NV)
        b.ret_void()

    if not direct_a:
        for rows in (r for r in SHORT_TILE_ROWS if r < MR):
            with b.if_then(b.icmp_signed("<=", mr, _c64(rows)), likely=False):
                full_width_or_edge(kloop(NV, f".rows{rows}", rows))
    full_width_or_edge(kloop(NV, ""))
    return fn


def _prefetch_tile(module, b, C, ldc, mr, nr, MR):
    """Ask for the C tile's cache lines (for writing) before the k loop: a tile of C that
    another kernel wrote earlier has left the caches, and its read-for-ownership misses
    then overlap the multiply-adds instead of stalling the stores after them. Rows past
    ``mr`` prefetch the last valid row again; a prefetch never faults or changes memory."""
    prefetch = _get_fn(module, "llvm.prefetch.p0i8", ir.FunctionType(void, [i8p, i32, i32, i32]))
    last_col = b.sub(nr, _c64(1))
    for i in range(MR):
        row = _min(b, _c64(i), b.sub(mr, _c64(1)))
        crow = _gep(b, C, b.mul(row, ldc))
        for col in (_c64(0), last_col):
            b.call(prefetch, [b.bitcast(_gep(b, crow, col), i8p), ir.Constant(i32, 1), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])


def _emit_scale(module, name):
    """``void scale(i64 M, i64 N, float beta, float* C, i64 ldc)``: C = beta*C,
    or C = 0 without reading C when beta == 0."""
    fn = _internal(module, name, ir.FunctionType(void, [i64, i64, f32, fptr, i64]),
                   ("M", "N", "beta", "C", "ldc"))
    M, N, beta, C, ldc = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bz = b.fcmp_ordered("==", beta, _cf(0.0))
    with for_range(b, M, name="i") as i:
        row = _gep(b, C, b.mul(i, ldc))
        with for_range(b, N, name="j") as j:
            p = _gep(b, row, j)
            with b.if_else(bz) as (z, nz):
                with z:
                    b.store(_cf(0.0), p)
                with nz:
                    b.store(b.fmul(b.load(p), beta), p)
    b.ret_void()
    return fn


def _ws_floats(b, M, N, K, MR, NR, KC, MC, NC, private_product=None):
    """(offset of the B panel, offset of the product strip, floats in all) of the workspace one
    slice of an M x N x K problem needs: A block + B panel, each rounded to whole 64-byte lines,
    and, when ``private_product`` (i32) is nonzero, one strip of the product (_emit_serial)."""
    def roundup(x, m):
        return b.mul(b.sdiv(b.add(x, _c64(m - 1)), _c64(m)), _c64(m))

    kc_max = _min(b, K, _c64(KC))
    a_sz = roundup(b.mul(_min(b, roundup(M, MR), _c64(MC)), kc_max), 16)
    b_sz = roundup(b.mul(kc_max, _min(b, roundup(N, NR), _c64(NC))), 16)
    c_off = b.add(a_sz, b_sz)
    if private_product is None:
        return a_sz, c_off, c_off
    c_sz = b.mul(_min(b, roundup(M, MR), _c64(MC)), _c64(STRIP_PANELS * NR))
    private = b.icmp_signed("!=", private_product, ir.Constant(i32, 0))
    return a_sz, c_off, b.add(c_off, b.select(private, c_sz, _c64(0)))


def _emit_serial(module, name, ukr, pack_a, pack_b, MR, NR, KC, MC, NC, narrow_ukr=None):
    """``void serial(<gemm args>, float* ws, <epilogue args>, i64 row0, i64 col0)``: the
    single-threaded driver (M, N, K >= 1, alpha != 0); ``ws`` is a 64-byte aligned workspace
    of at least ``_ws_floats(M, N, K, private_product)`` floats. A non-null ``epilogue`` is
    called on each final C block, with this call's C origin at (row0, col0) of the whole
    product.

    ``narrow_ukr`` (a ``direct_a`` micro-kernel): a product with at most NR columns (a
    10-class output layer) goes through it, A read where it lies: packing A would copy
    every element of A for the NR/MR multiply-adds each takes part in, as much memory
    traffic as the product itself (W5's 256 x 10 x 1024 products: see _emit_narrow)."""
    fn = _internal(module, name, ir.FunctionType(void, list(GEMM_ARG_TYPES) + [fptr, *_EPI_ARG_TYPES, i64, i64]),
                   _ARG_NAMES + ("ws",) + _EPI_ARG_NAMES + ("row0", "col0"))
    ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ws, epi, ectx, epf, private, row0, col0 = fn.args
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    transA = b.icmp_signed("!=", ta, ir.Constant(i32, 0))
    transB = b.icmp_signed("!=", tb, ir.Constant(i32, 0))
    contigA = transA              # op(A)(r, k) contiguous in r when A is stored K x M
    contigB = b.not_(transB)      # op(B)(k, j) contiguous in j when B is stored K x N
    b_off, c_off, _ = _ws_floats(b, M, N, K, MR, NR, KC, MC, NC)
    Ap = ws
    Bp = _gep(b, ws, b_off)
    has_epilogue = b.icmp_unsigned("!=", b.ptrtoint(epi, i64), _c64(0))
    has_prefetch = b.icmp_unsigned("!=", b.ptrtoint(epf, i64), _c64(0))

    beta_is_zero = b.fcmp_ordered("==", beta, _cf(0.0))
    # K in equal blocks of at most KC (784 = 4 x 196, not 3 x 256 + 16: a shallow last block
    # would pay a whole pass of C loads and stores for a few multiply-adds)
    k_blocks = b.sdiv(b.add(K, _c64(KC - 1)), _c64(KC))
    KCb = b.sdiv(b.add(K, b.sub(k_blocks, _c64(1))), k_blocks)
    # A product only the epilogue reads, final after one K block, goes strip by strip into the
    # workspace (MC x STRIP_PANELS*NR floats, reused, so it stays in L2) instead of C: C's
    # lines would otherwise be read for ownership and written back, 8 MB of memory traffic on
    # W5's 1024 x 1024 weight gradient, a third of what its fused SGD-momentum update moves.
    in_strip = b.and_(b.and_(has_epilogue, b.icmp_signed("!=", private, ir.Constant(i32, 0))),
                      b.and_(beta_is_zero, b.icmp_signed("==", k_blocks, _c64(1))))
    strip_ld = _c64(STRIP_PANELS * NR)
    Cs = _gep(b, ws, c_off)
    # strips only when there is state to ask for or the product goes into one: else the block
    # is one strip (finishing a residual epilogue in two calls per block cost TX's 128-wide
    # products ~4 %)
    strip = b.select(b.or_(has_prefetch, in_strip), strip_ld, _c64(NC))
    if narrow_ukr is not None:
        with b.if_then(_narrow(b, N, transA, MR, NR)):
            _emit_narrow(b, narrow_ukr, pack_b, MR, NR, MC, fn.args, transA, contigB, Bp, KCb, beta_is_zero,
                         has_epilogue)
            b.ret_void()
    with for_range(b, N, start=0, step=NC, name="jc") as jc:
        nc = _min(b, _c64(NC), b.sub(N, jc))
        with for_range(b, K, start=0, step=KCb, name="pc") as pc:
            kc = _min(b, KCb, b.sub(K, pc))
            # B sub-matrix at (pc, jc) of op(B)
            boff = b.select(transB, b.add(b.mul(jc, ldb), pc), b.add(b.mul(pc, ldb), jc))
            b.call(pack_b, [contigB, nc, kc, _gep(b, B, boff), ldb, Bp])
            first = b.icmp_signed("==", pc, _c64(0))
            beta_eff = b.select(first, beta, _cf(1.0))
            load_c = b.not_(b.and_(first, beta_is_zero))
            final = b.and_(has_epilogue, b.icmp_signed(">=", b.add(pc, KCb), K))
            with for_range(b, M, start=0, step=MC, name="ic") as ic:
                mc = _min(b, _c64(MC), b.sub(M, ic))
                aoff = b.select(transA, b.add(b.mul(pc, lda), ic), b.add(b.mul(ic, lda), pc))
                b.call(pack_a, [contigA, mc, kc, _gep(b, A, aoff), lda, Ap])
                cblk = _gep(b, C, b.add(b.mul(ic, ldc), jc))
                # with a prefetch function, the block's columns in strips of STRIP_PANELS
                # micro-panels: the epilogue finishes each strip after its last tile, and while a
                # strip is computed its tiles ask for the next strip's epilogue operands, tile by
                # tile, so that the state an update reads and rewrites (W5: 16 MB a step) streams
                # in under the multiply-adds instead of after them
                with for_range(b, nc, start=0, step=strip, name="js") as js:
                    scols = _min(b, strip, b.sub(nc, js))
                    # the next strip: to the right in this block, else the first of the next block
                    right = b.icmp_signed("<", b.add(js, strip), nc)
                    next_js = b.select(right, b.add(js, strip), _c64(0))
                    next_ic = b.select(right, ic, b.add(ic, _c64(MC)))
                    next_mc = _min(b, _c64(MC), b.sub(M, next_ic))
                    fetch = b.and_(b.and_(final, has_prefetch), b.icmp_signed(">", next_mc, _c64(0)))
                    with for_range(b, b.add(js, scols), start=js, step=NR, name="jr") as jr:
                        nr = _min(b, _c64(NR), b.sub(nc, jr))
                        bp = _gep(b, Bp, b.mul(jr, kc))
                        fetch_col = b.add(next_js, b.sub(jr, js))
                        fetch_nr = _min(b, _c64(NR), b.sub(nc, fetch_col))
                        fetch_panel = b.and_(fetch, b.icmp_signed(">", fetch_nr, _c64(0)))
                        with for_range(b, mc, start=0, step=MR, name="ir") as ir_:
                            mr = _min(b, _c64(MR), b.sub(mc, ir_))
                            fetch_mr = _min(b, _c64(MR), b.sub(next_mc, ir_))
                            with b.if_then(b.and_(fetch_panel, b.icmp_signed(">", fetch_mr, _c64(0)))):
                                # (the prefetch function reads no product)
                                b.call(epf, [ectx, b.add(row0, b.add(next_ic, ir_)), fetch_mr,
                                             b.add(col0, b.add(jc, fetch_col)), fetch_nr, C, ldc])
                            ap = _gep(b, Ap, b.mul(ir_, kc))
                            cp = b.select(in_strip, _gep(b, Cs, b.add(b.mul(ir_, strip_ld), b.sub(jr, js))),
                                          _gep(b, cblk, b.add(b.mul(ir_, ldc), jr)))
                            b.call(ukr, [kc, ap, bp, cp, b.select(in_strip, strip_ld, ldc), mr, nr, alpha,
                                         beta_eff, load_c])
                    with b.if_then(final):
                        b.call(epi, [ectx, b.add(row0, ic), mc, b.add(col0, b.add(jc, js)), scols,
                                     b.select(in_strip, Cs, _gep(b, cblk, js)), b.select(in_strip, strip_ld, ldc)])
    b.ret_void()
    return fn


# Rows of A a narrow product's micro-kernel reads side by side, where they lie, when A is not
# transposed: each row is a stream ldA floats from the next, and with a power-of-two ldA (a
# 1024-wide activation) all of them fall in one L1 set. Up to 8 (the L1's ways here) they stay;
# a 12-row AVX-512 tile would evict its own rows, so there A is still packed.
NARROW_MAX_ROW_STREAMS = 8


def _narrow(b, N, transA, MR, NR):
    """Whether a product takes the narrow path (at most NR columns; A's rows readable in place)."""
    fits = b.icmp_signed("<=", N, _c64(NR))
    return fits if MR <= NARROW_MAX_ROW_STREAMS else b.and_(fits, transA)


def _emit_narrow(b, ukr, pack_b, MR, NR, MC, args, transA, contigB, Bp, KCb, beta_is_zero, has_epilogue):
    """The narrow product (N <= NR): B packed one KC block at a time into one NR-wide panel,
    every MR-row tile of C then summed over that block straight from A (no A packing; on W5's
    256 x 10 x 1024 forward product on one Zen 2 core, 181 us packed). The epilogue sees each
    MC-row block of C after its last K block."""
    ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ws, epi, ectx, epf, _, row0, col0 = args
    row_stride = b.select(transA, _c64(1), lda)  # op(A)(i, k) = A[i*row_stride + k*k_stride]
    k_stride = b.select(transA, lda, _c64(1))
    with for_range(b, K, start=0, step=KCb, name="pc") as pc:
        kc = _min(b, KCb, b.sub(K, pc))
        boff = b.select(b.not_(contigB), pc, b.mul(pc, ldb))
        b.call(pack_b, [contigB, N, kc, _gep(b, B, boff), ldb, Bp])
        first = b.icmp_signed("==", pc, _c64(0))
        beta_eff = b.select(first, beta, _cf(1.0))
        load_c = b.not_(b.and_(first, beta_is_zero))
        final = b.and_(has_epilogue, b.icmp_signed(">=", b.add(pc, KCb), K))
        a_k = _gep(b, A, b.mul(pc, k_stride))
        with for_range(b, M, start=0, step=MC, name="ic") as ic:
            mc = _min(b, _c64(MC), b.sub(M, ic))
            with for_range(b, b.add(ic, mc), start=ic, step=MR, name="ir") as i0:
                mr = _min(b, _c64(MR), b.sub(M, i0))
                b.call(ukr, [kc, _gep(b, a_k, b.mul(i0, row_stride)), row_stride, k_stride, Bp,
                             _gep(b, C, b.mul(i0, ldc)), ldc, mr, N, alpha, beta_eff, load_c])
            with b.if_then(final):
                b.call(epi, [ectx, b.add(row0, ic), mc, col0, N, _gep(b, C, b.mul(ic, ldc)), ldc])


# micro-panels of C an epilogue that updates state finishes at a time (see _emit_serial). W5's
# 1024x1024 weight gradient with its SGD update, Mcycles a step: strips of 2 panels 7.64, 4 7.55,
# 8 7.70, 16 8.56; the whole 144 x 512 block without prefetching 8.3, the plain product 6.4
STRIP_PANELS = 4

# how a parallel GEMM is cut into slices (the ``split`` field of its context)
SPLIT_M, SPLIT_N, SPLIT_K = 0, 1, 2

# A product whose K is at least this many times its larger output dimension is split over K:
# the weight gradients of a batch of 4096 rows (128 x 128 x 4096) otherwise split a 128-wide
# N or M, and every slice packs all of the other operand (the whole 4096-deep panel).
SPLIT_K_RATIO = 4

# the parallel context: the GEMM arguments + split, workspace, floats per slice, epilogue
_CTX_T = ir.LiteralStructType(list(GEMM_ARG_TYPES) + [i32, fptr, i64, *_EPI_ARG_TYPES])


def _load_context(b, ctx, ctx_type):
    """The fields of the ``ctx_type`` record a part function's ``i8* ctx`` points to."""
    rec = b.bitcast(ctx, ctx_type.as_pointer())
    z = ir.Constant(i32, 0)
    return [b.load(b.gep(rec, [z, ir.Constant(i32, k)], inbounds=True)) for k in range(len(ctx_type.elements))]


def _store_context(b, ctx, values):
    z = ir.Constant(i32, 0)
    for k, v in enumerate(values):
        b.store(v, b.gep(ctx, [z, ir.Constant(i32, k)], inbounds=True))


def _no_epilogue():
    return [ir.Constant(t, None) for t in _EPI_ARG_TYPES]


def _allocate_workspace(b, module, floats):
    """(raw pointer to free, 64-byte aligned float*) of a malloc of ``floats`` floats on the
    calling thread; out of memory traps."""
    malloc = _malloc(module)
    trap = _get_fn(module, "llvm.trap", ir.FunctionType(void, []))
    raw = b.call(malloc, [b.add(b.mul(floats, _c64(4)), _c64(64))])
    with b.if_then(b.icmp_unsigned("==", b.ptrtoint(raw, i64), _c64(0)), likely=False):
        b.call(trap, [])  # out of memory for packing buffers
        b.unreachable()
    return raw, b.inttoptr(b.and_(b.add(b.ptrtoint(raw, i64), _c64(63)), _c64(~63)), fptr)


def _emit_part(module, name, serial, MR, NR):
    """``void part(i8* ctx, i64 part, i64 nparts)``: slice ``part`` of the GEMM in ctx. Split
    over K, slice 0 computes into C (with beta) and slice p > 0 into its own M x N partial
    product after all slices' packing buffers; the caller adds the partials into C."""
    fn = _internal(module, name, _threads.PART_FN_TYPE, ("ctx", "part", "nparts"))
    ctx, part, nparts = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, split, ws, ws_per, epi, ectx, epf, private = \
        _load_context(b, ctx, _CTX_T)
    z = ir.Constant(i32, 0)
    my_ws = _gep(b, ws, b.mul(part, ws_per))

    def bounds(total, unit):
        nblk = b.sdiv(b.add(total, _c64(unit - 1)), _c64(unit))
        b0 = b.sdiv(b.mul(part, nblk), nparts)
        b1 = b.sdiv(b.mul(b.add(part, _c64(1)), nblk), nparts)
        lo = b.mul(b0, _c64(unit))
        hi = _min(b, b.mul(b1, _c64(unit)), total)
        return lo, hi

    transA = b.icmp_signed("!=", ta, z)
    transB = b.icmp_signed("!=", tb, z)
    cases = b.switch(split, fn.append_basic_block("split_m"))
    done = fn.append_basic_block("done")
    on_n, on_k = fn.append_basic_block("split_n"), fn.append_basic_block("split_k")
    cases.add_case(ir.Constant(i32, SPLIT_N), on_n)
    cases.add_case(ir.Constant(i32, SPLIT_K), on_k)

    b.position_at_end(cases.default)
    m0, m1 = bounds(M, MR)
    with b.if_then(b.icmp_signed("<", m0, m1)):
        aoff = b.select(transA, m0, b.mul(m0, lda))
        b.call(serial, [ta, tb, b.sub(m1, m0), N, K, alpha, _gep(b, A, aoff), lda,
                        B, ldb, beta, _gep(b, C, b.mul(m0, ldc)), ldc, my_ws, epi, ectx, epf, private, m0,
                        _c64(0)])
    b.branch(done)

    b.position_at_end(on_n)
    n0, n1 = bounds(N, NR)
    with b.if_then(b.icmp_signed("<", n0, n1)):
        boff = b.select(transB, b.mul(n0, ldb), n0)
        b.call(serial, [ta, tb, M, b.sub(n1, n0), K, alpha, A, lda,
                        _gep(b, B, boff), ldb, beta, _gep(b, C, n0), ldc, my_ws, epi, ectx, epf, private, _c64(0),
                        n0])
    b.branch(done)

    b.position_at_end(on_k)
    k0, k1 = bounds(K, 16)
    with b.if_then(b.icmp_signed("<", k0, k1)):
        aoff = b.select(transA, b.mul(k0, lda), k0)
        boff = b.select(transB, k0, b.mul(k0, ldb))
        first = b.icmp_signed("==", part, _c64(0))
        partial = _gep(b, ws, b.add(b.mul(nparts, ws_per), b.mul(b.sub(part, _c64(1)), b.mul(M, N))))
        b.call(serial, [ta, tb, M, N, b.sub(k1, k0), alpha, _gep(b, A, aoff), lda, _gep(b, B, boff), ldb,
                        b.select(first, beta, _cf(0.0)), b.select(first, C, partial), b.select(first, ldc, N),
                        my_ws] + _no_epilogue() + [_c64(0), _c64(0)])
    b.branch(done)

    b.position_at_end(done)
    b.ret_void()
    return fn


def emit_gemm(module: ir.Module, name: str = "kc_sgemm", *, nthreads: int | None = None,
              parallel_min_mnk: int = DEFAULT_PARALLEL_MIN_MNK,
              parallel_min_floats: int = DEFAULT_PARALLEL_MIN_FLOATS,
              mr: int | None = None, nr: int | None = None, kc: int = DEFAULT_KC,
              mc: int = DEFAULT_MC, nc: int = DEFAULT_NC, epilogue_name: str | None = None,
              batched_name: str | None = None) -> ir.Function:
    """Add ``void <name>(i32 trans_a, i32 trans_b, i64 M, i64 N, i64 K, float alpha,
    float* A, i64 lda, float* B, i64 ldb, float beta, float* C, i64 ldc)`` to ``module``
    and, when ``epilogue_name`` is given, the same GEMM with an epilogue hook under that
    name (``GEMM_EPILOGUE_FN_TYPE``, see the module docstring); both share one body.
    ``batched_name``: also add the batched GEMM (``BATCHED_GEMM_FN_TYPE``, :func:`_emit_batched`).

    ``nthreads`` (default: the CPUs available, 1 without pthreads) is the number
    of slices a large call is split into; a call stays on the calling thread when its
    ``M*N*K`` is below ``parallel_min_mnk`` and its ``M*K + K*N + M*N`` below
    ``parallel_min_floats``. ``mr``/``nr`` set the register tile
    (default: the host's, :func:`register_tile`; ``nr`` a multiple of the vector
    width; ``mr * nr/width`` accumulators must fit the vector registers with room
    for ``nr/width + 1`` more), ``kc``/``mc``/``nc`` the cache blocking (``mc`` is
    rounded to a multiple of ``mr``, ``nc`` of ``nr``).
    Internal helpers are named ``<name>.*`` with internal linkage, so several
    variants can live in one module. Returns the new function.
    """
    vw, host_mr, host_nr, registers = register_tile()
    mr = host_mr if mr is None else mr
    nr = host_nr if nr is None else nr
    if nr % vw or nr <= 0:
        raise ValueError(f"nr must be a positive multiple of {vw}, got {nr}")
    if mr <= 0 or kc <= 0 or mc <= 0 or nc <= 0:
        raise ValueError("tile sizes must be positive")
    if mr * (nr // vw) + nr // vw + 1 > registers:
        raise ValueError(f"a {mr}x{nr} tile needs more than {registers} vector registers")
    for n in (name, epilogue_name, batched_name):
        if n is not None and module.globals.get(n) is not None:
            raise ValueError(f"module already has a global named {n!r}")
    mc = max(mr, (mc // mr) * mr)
    nc = max(nr, (nc // nr) * nr)
    if nthreads is None:
        nthreads = _threads.default_nthreads()
    nthreads = max(1, min(int(nthreads), _threads.MAX_PARTS))

    ukr = _emit_microkernel(module, f"{name}.ukr", mr, nr, vw)
    pack_a = _emit_pack(module, f"{name}.pack_a", mr, vw)
    pack_b = _emit_pack(module, f"{name}.pack_b", nr, vw)
    narrow_ukr = _emit_microkernel(module, f"{name}.ukr_direct", mr, nr, vw, direct_a=True)
    serial = _emit_serial(module, f"{name}.serial", ukr, pack_a, pack_b, mr, nr, kc, mc, nc, narrow_ukr)
    part = _emit_part(module, f"{name}.part", serial, mr, nr) if nthreads > 1 else None
    body = _internal(module, f"{name}.body", GEMM_EPILOGUE_FN_TYPE, _ARG_NAMES + _EPI_ARG_NAMES)
    _emit_body(module, body, name, serial, part, nthreads, (parallel_min_mnk, parallel_min_floats), mr, nr, kc, mc,
               nc)

    # the public entries: thin wrappers the optimiser inlines
    fn = ir.Function(module, GEMM_FN_TYPE, name=name)
    for a, n in zip(fn.args, _ARG_NAMES):
        a.name = n
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.call(body, list(fn.args) + _no_epilogue())
    b.ret_void()
    if epilogue_name is not None:
        with_epilogue = ir.Function(module, GEMM_EPILOGUE_FN_TYPE, name=epilogue_name)
        for a, n in zip(with_epilogue.args, _ARG_NAMES + _EPI_ARG_NAMES):
            a.name = n
        b = ir.IRBuilder(with_epilogue.append_basic_block("entry"))
        b.call(body, list(with_epilogue.args))
        b.ret_void()
    if batched_name is not None:
        _emit_batched(module, batched_name, body, serial, nthreads, parallel_min_mnk, mr, nr, kc, mc, nc)
    return fn


def _emit_body(module, fn, name, serial, part, nthreads, parallel_min, mr, nr, kc, mc, nc):
    """The GEMM with its epilogue hook: the edge cases, the thread split and the workspace."""
    scale = _emit_scale(module, f"{name}.scale")
    ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, epi, ectx, epf, private = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx = b.alloca(_CTX_T, name="ctx") if part is not None else None
    empty = b.or_(b.icmp_signed("<=", M, _c64(0)), b.icmp_signed("<=", N, _c64(0)))
    with b.if_then(empty, likely=False):
        b.ret_void()
    # ordered compare: a NaN alpha takes the product path and propagates NaN
    no_product = b.or_(b.icmp_signed("<=", K, _c64(0)), b.fcmp_ordered("==", alpha, _cf(0.0)))
    with b.if_then(no_product, likely=False):
        b.call(scale, [M, N, beta, C, ldc])
        with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(epi, i64), _c64(0))):
            b.call(epi, [ectx, _c64(0), M, _c64(0), N, C, ldc])
        b.ret_void()
    args = [ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc]

    if part is not None:
        # split the larger dimension in whole micro-tile blocks, or K when it dwarfs both
        nblk_n = b.sdiv(b.add(N, _c64(nr - 1)), _c64(nr))
        nblk_m = b.sdiv(b.add(M, _c64(mr - 1)), _c64(mr))
        nblk_k = b.sdiv(b.add(K, _c64(15)), _c64(16))
        T = _c64(nthreads)
        mnk = b.mul(b.mul(M, N), K)
        floats = b.add(b.mul(K, b.add(M, N)), b.mul(M, N))
        big = b.or_(b.icmp_signed(">=", mnk, _c64(parallel_min[0])), b.icmp_signed(">=", floats, _c64(parallel_min[1])))
        # split N when N >= M or when M has too few blocks
        split_n = b.or_(b.icmp_signed(">=", N, M), b.icmp_signed("<", nblk_m, T))
        split_k = b.icmp_signed(">=", K, b.mul(_c64(SPLIT_K_RATIO), b.select(split_n, N, M)))
        split = b.select(split_k, ir.Constant(i32, SPLIT_K),
                         b.select(split_n, ir.Constant(i32, SPLIT_N), ir.Constant(i32, SPLIT_M)))
        nblk = b.select(split_k, nblk_k, b.select(split_n, nblk_n, nblk_m))
        nparts = b.select(big, _min(b, T, nblk), _c64(1))
    else:
        nparts = _c64(1)

    # one workspace for all slices, allocated on the calling thread (a fresh
    # thread's malloc arena would page-fault its buffers in on every call); a K split
    # also holds the partial products of slices 1.. after the packing buffers
    _, _, ws_per = _ws_floats(b, M, N, K, mr, nr, kc, mc, nc, private)
    floats = b.mul(ws_per, nparts)
    if part is not None:
        partials = b.mul(b.mul(M, N), b.sub(nparts, _c64(1)))
        floats = b.add(floats, b.select(split_k, partials, _c64(0)))
    raw, ws = _allocate_workspace(b, module, floats)
    serial_tail = [ws, epi, ectx, epf, private, _c64(0), _c64(0)]

    if part is None:
        b.call(serial, args + serial_tail)
    else:
        with b.if_else(b.icmp_signed(">", nparts, _c64(1))) as (par, ser):
            with par:
                _store_context(b, ctx, args + [split, ws, ws_per, epi, ectx, epf, private])
                _threads.emit_parallel_call(b, part, ctx, nparts)
                with b.if_then(split_k):
                    _add_partials(b, C, ldc, M, N, _gep(b, ws, b.mul(nparts, ws_per)), b.sub(nparts, _c64(1)))
                    with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(epi, i64), _c64(0))):
                        b.call(epi, [ectx, _c64(0), M, _c64(0), N, C, ldc])
            with ser:
                b.call(serial, args + serial_tail)
    b.call(_free(module), [raw])
    b.ret_void()


def _add_partials(b, C, ldc, M, N, partials, count):
    """C[i, j] += the (i, j) element of each of ``count`` contiguous M x N partial products."""
    with for_range(b, count, name="p") as p:
        base = _gep(b, partials, b.mul(p, b.mul(M, N)))
        with for_range(b, M, name="i") as i:
            row, prow = _gep(b, C, b.mul(i, ldc)), _gep(b, base, b.mul(i, N))
            with for_range(b, N, name="j") as j:
                dst = _gep(b, row, j)
                b.store(b.fadd(b.load(dst), b.load(_gep(b, prow, j))), dst)


# the batched GEMM's parallel context: its arguments + workspace and floats per part
_BATCH_CTX_T = ir.LiteralStructType(list(BATCHED_GEMM_ARG_TYPES) + [fptr, i64])


def _emit_batched(module, name, body, serial, nthreads, parallel_min_mnk, mr, nr, kc, mc, nc):
    """``void <name>(<BATCHED_GEMM_ARG_TYPES>)``: ``batch`` independent products, the i-th on
    ``A + i*stride_a``, ``B + i*stride_b``, ``C + i*stride_c`` (a stride 0 reuses one operand).

    A product large enough to be split over the cores by itself runs one after the other
    through the GEMM's body. Smaller ones (attention's per-head 128 x 128 x 64 products: each
    would run on one core, paying a pthread start and a malloc per product) are dealt out
    whole to the cores, each core running its share of the batch with its own packing buffers
    and no synchronisation until the end."""
    fn = ir.Function(module, BATCHED_GEMM_FN_TYPE, name=name)
    for a, n in zip(fn.args, _BATCHED_ARG_NAMES):
        a.name = n
    ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mnk = b.mul(b.mul(M, N), K)
    whole = b.or_(b.icmp_signed("<=", M, _c64(0)), b.icmp_signed("<=", N, _c64(0)))
    whole = b.or_(whole, b.or_(b.icmp_signed("<=", K, _c64(0)), b.fcmp_ordered("==", alpha, _cf(0.0))))
    T = min(nthreads, _threads.MAX_PARTS)
    if T > 1:
        # one product big enough for the body's own split, or too little work in all
        whole = b.or_(whole, b.icmp_signed(">=", mnk, _c64(parallel_min_mnk)))
        whole = b.or_(whole, b.icmp_signed("<", b.mul(mnk, batch), _c64(parallel_min_mnk)))
        whole = b.or_(whole, b.icmp_signed("<", batch, _c64(2)))
    else:
        whole = ir.Constant(i1, 1)
    with b.if_else(whole) as (one_by_one, dealt):
        with one_by_one:
            with for_range(b, batch, name="i") as i:
                b.call(body, [ta, tb, M, N, K, alpha, _gep(b, A, b.mul(i, sa)), lda, _gep(b, B, b.mul(i, sb)), ldb,
                              beta, _gep(b, C, b.mul(i, sc)), ldc] + _no_epilogue())
        with dealt:
            if T > 1:
                nparts = _min(b, batch, _c64(T))
                _, _, ws_per = _ws_floats(b, M, N, K, mr, nr, kc, mc, nc)
                raw, ws = _allocate_workspace(b, module, b.mul(ws_per, nparts))
                ctx = b.alloca(_BATCH_CTX_T, name="ctx")
                _store_context(b, ctx, list(fn.args) + [ws, ws_per])
                _threads.emit_parallel_call(b, _emit_batched_part(module, f"{name}.part", serial), ctx, nparts)
                b.call(_free(module), [raw])
    b.ret_void()
    return fn


def _emit_batched_part(module, name, serial):
    """``void part(i8* ctx, i64 part, i64 nparts)``: products [part*batch/nparts,
    (part+1)*batch/nparts) of the batched GEMM in ctx, one after the other on this core."""
    fn = _internal(module, name, _threads.PART_FN_TYPE, ("ctx", "part", "nparts"))
    ctx, part, nparts = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch, ws, ws_per = \
        _load_context(b, ctx, _BATCH_CTX_T)
    my_ws = _gep(b, ws, b.mul(part, ws_per))
    lo = b.sdiv(b.mul(part, batch), nparts)
    hi = b.sdiv(b.mul(b.add(part, _c64(1)), batch), nparts)
    with for_range(b, hi, start=lo, name="i") as i:
        b.call(serial, [ta, tb, M, N, K, alpha, _gep(b, A, b.mul(i, sa)), lda, _gep(b, B, b.mul(i, sb)), ldb,
                        beta, _gep(b, C, b.mul(i, sc)), ldc, my_ws] + _no_epilogue() + [_c64(0), _c64(0)])
    b.ret_void()
    return fn
