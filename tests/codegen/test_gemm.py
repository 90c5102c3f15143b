"""Tests of the generated SGEMM (kcompiler.codegen.llvm.gemm) and the parallel runner.

Most tests compile at opt level 1 (fast to compile, same semantics); one test
compiles the default build at opt level 3. numpy float64 is the reference.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap

import llvmlite.ir as ir
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcompiler.codegen.llvm import gemm as G
from kcompiler.codegen.llvm import jit as T
from kcompiler.codegen.llvm import threads as TH

ARGTYPES = G.gemm_ctypes_argtypes()
ODD = (1, 3, 17, 33, 100)

# variants compiled into the shared test module
#   ser:   default tiling, one thread
#   par:   tiny cache blocks (many jc/pc/ic iterations even for small shapes),
#          3 slices from the first flop on (exercises the split and the runner)
#   par2:  default tiling, 2 slices from the first flop on
VARIANTS = {
    "ser": dict(nthreads=1),
    "par": dict(nthreads=3, parallel_min_mnk=0, kc=16, mc=24, nc=64),
    "par2": dict(nthreads=2, parallel_min_mnk=0),
}


@pytest.fixture(scope="module")
def kernels():
    mod = ir.Module(name="test_gemm")
    for name, kw in VARIANTS.items():
        G.emit_gemm(mod, f"g_{name}", **kw)
    cm = T.compile_ir(str(mod), opt_level=1, name="test_gemm")
    return {name: cm.function(f"g_{name}", None, *ARGTYPES) for name in VARIANTS}


# ----------------------------------------------------------------- helpers
def tol_ok(got, expected):
    atol = 1e-5 * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)


def padded(rng, rows, cols, pad, fill):
    """A rows x cols view into a (rows + 1) x (cols + pad) buffer whose other
    elements are ``fill``; returns (view, full, ld)."""
    full = np.full((rows + 1, cols + pad), fill, dtype=np.float32)
    view = full[:rows, :cols]
    view[...] = rng.standard_normal((rows, cols)).astype(np.float32)
    return view, full, cols + pad


def run_case(f, rng, M, N, K, ta, tb, alpha=1.0, beta=0.0, pads=(0, 0, 0), c_fill=None):
    """Call f on random operands (padding NaN-filled in A and B, sentinel in C)
    and check the result and that nothing outside C's view changed."""
    pa, pb, pc = pads
    A, Afull, lda = padded(rng, *((K, M) if ta else (M, K)), pa, np.nan)
    B, Bfull, ldb = padded(rng, *((N, K) if tb else (K, N)), pb, np.nan)
    C, Cfull, ldc = padded(rng, M, N, pc, 1234.5)
    if c_fill is not None:
        C[...] = c_fill
    C0 = C.astype(np.float64)
    opA = (A.T if ta else A).astype(np.float64)
    opB = (B.T if tb else B).astype(np.float64)
    expected = alpha * (opA @ opB)
    if beta != 0.0:
        expected = expected + beta * C0
    guard = Cfull.copy()
    f(ta, tb, M, N, K, alpha, A.ctypes.data, lda, B.ctypes.data, ldb, beta, C.ctypes.data, ldc)
    tol_ok(C, expected)
    mask = np.ones(Cfull.shape, bool)
    mask[:M, :N] = False
    assert np.array_equal(Cfull[mask], guard[mask]), "wrote outside C"


# ----------------------------------------------------------------- odd sizes
@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
def test_odd_sizes_all_transposes(kernels, ta, tb):
    rng = np.random.default_rng(100 + 2 * ta + tb)
    for M, N, K in itertools.product(ODD, repeat=3):
        for name in ("ser", "par"):
            run_case(kernels[name], rng, M, N, K, ta, tb, alpha=0.75, beta=0.5)


@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
def test_every_row_remainder_full_and_edge_columns(kernels, ta, tb):
    """A last tile of each possible number of rows (the short-tile loop and the full one),
    with whole NR-wide column panels, an edge panel and a one-vector edge."""
    _, mr, nr, _ = G.register_tile()
    rng = np.random.default_rng(300 + 2 * ta + tb)
    for rows in range(1, mr + 1):
        for N in (2 * nr, nr + 3, 5):
            for name in ("ser", "par2"):
                run_case(kernels[name], rng, 2 * mr + rows, N, 37, ta, tb, alpha=0.5, beta=1.5, pads=(1, 2, 3))
                run_case(kernels[name], rng, 2 * mr + rows, N, 37, ta, tb, beta=0.0, c_fill=np.nan)


@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
def test_submatrix_views_and_beta_zero_nan(kernels, ta, tb):
    rng = np.random.default_rng(7 + 2 * ta + tb)
    for (M, N, K), name in itertools.product([(5, 7, 9), (13, 40, 33), (37, 65, 130)],
                                             ("ser", "par", "par2")):
        # lda/ldb/ldc larger than the number of columns (sub-matrix views)
        run_case(kernels[name], rng, M, N, K, ta, tb, alpha=-1.25, beta=2.0, pads=(3, 5, 7))
        # beta == 0 must not read C: it holds NaN
        run_case(kernels[name], rng, M, N, K, ta, tb, alpha=1.5, beta=0.0, pads=(1, 2, 3),
                 c_fill=np.nan)


def test_narrow_products_read_a_in_place(kernels):
    """Products with at most NR columns read A where it lies (gemm._emit_narrow): M past one
    MC block and not a whole number of MR tiles, K past one KC block, N at and around NR, A
    rows a power of two apart (W5's output layer), and NaN beyond every operand's view."""
    _, mr, nr, _ = G.register_tile()
    rng = np.random.default_rng(11)
    for N in (1, nr - 1, nr, nr + 1):
        for ta, tb in itertools.product((0, 1), repeat=2):
            for name in ("ser", "par", "par2"):
                run_case(kernels[name], rng, 150, N, 300, ta, tb, alpha=0.5, beta=0.25, pads=(1024 - 300, 2, 1))
                run_case(kernels[name], rng, 4 * mr + 1, N, 257, ta, tb, beta=0.0, pads=(0, 0, 0), c_fill=np.nan)


# ----------------------------------------------------------------- hypothesis
@settings(max_examples=60, deadline=None)
@given(
    M=st.integers(1, 70), N=st.integers(1, 70), K=st.integers(1, 90),
    ta=st.integers(0, 1), tb=st.integers(0, 1),
    alpha=st.sampled_from([1.0, -1.0, 0.5, 3.0]),
    beta=st.sampled_from([0.0, 1.0, -0.5]),
    pads=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    name=st.sampled_from(sorted(VARIANTS)),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(kernels, M, N, K, ta, tb, alpha, beta, pads, name, seed):
    rng = np.random.default_rng(seed)
    c_fill = np.nan if beta == 0.0 else None
    run_case(kernels[name], rng, M, N, K, ta, tb, alpha, beta, pads, c_fill)


# ----------------------------------------------------------------- special cases
def test_several_k_blocks_apply_beta_once(kernels):
    rng = np.random.default_rng(3)
    # default KC is 256: K = 600 takes three k blocks; the tiny-block variant many
    for name in ("ser", "par2", "par"):
        for ta, tb in itertools.product((0, 1), repeat=2):
            run_case(kernels[name], rng, 29, 45, 600, ta, tb, alpha=0.5, beta=-2.0)


@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
def test_split_over_k(kernels, ta, tb):
    # K >= 4 x the split dimension: slices are ranges of K, added into C after the join
    # (beta applied once, C's padding untouched, a K that does not divide evenly)
    rng = np.random.default_rng(8 + 2 * ta + tb)
    for (M, N, K), name in itertools.product([(24, 40, 700), (5, 3, 61), (128, 64, 1000)], ("par", "par2")):
        run_case(kernels[name], rng, M, N, K, ta, tb, alpha=0.5, beta=-2.0, pads=(2, 1, 3))
        run_case(kernels[name], rng, M, N, K, ta, tb, alpha=1.0, beta=0.0, pads=(0, 0, 1), c_fill=np.nan)


def test_large_threaded_default_tiling(kernels):
    rng = np.random.default_rng(4)
    # several NC and MC blocks per slice; both split directions
    run_case(kernels["par2"], rng, 150, 1100, 70, 0, 0, alpha=1.0, beta=0.25)
    run_case(kernels["par2"], rng, 1100, 150, 70, 1, 1, alpha=1.0, beta=0.0, c_fill=np.nan)


def test_k_zero_and_alpha_zero_scale_c(kernels):
    rng = np.random.default_rng(5)
    for name, f in kernels.items():
        M, N = 9, 21
        C = rng.standard_normal((M, N)).astype(np.float32)
        C0 = C.copy()
        A = np.full((M, 4), np.nan, np.float32)  # must not be read
        B = np.full((4, N), np.nan, np.float32)
        f(0, 0, M, N, 0, 1.0, A.ctypes.data, 4, B.ctypes.data, N, 2.0, C.ctypes.data, N)
        np.testing.assert_allclose(C, 2.0 * C0, rtol=1e-6)
        f(0, 0, M, N, 4, 0.0, A.ctypes.data, 4, B.ctypes.data, N, 0.5, C.ctypes.data, N)
        np.testing.assert_allclose(C, C0, rtol=1e-6)
        C[...] = np.nan
        f(0, 0, M, N, 0, 1.0, A.ctypes.data, 4, B.ctypes.data, N, 0.0, C.ctypes.data, N)
        assert np.all(C == 0.0)


# ----------------------------------------------------------------- the epilogue hook
EPILOGUE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_void_p, ctypes.c_int64)


@pytest.fixture(scope="module")
def epilogue_gemms():
    """The epilogue entries of a one-thread build and of a 3-slice build with tiny blocks."""
    mod = ir.Module(name="test_gemm_epilogue")
    variants = {"ser": VARIANTS["ser"], "par": VARIANTS["par"]}
    for name, kw in variants.items():
        G.emit_gemm(mod, f"g_{name}", epilogue_name=f"g_{name}_epilogue", **kw)
    cm = T.compile_ir(str(mod), opt_level=1, name="test_gemm_epilogue")
    return {name: cm.function(f"g_{name}_epilogue", None, *ARGTYPES, EPILOGUE, ctypes.c_void_p, EPILOGUE,
                              ctypes.c_int32) for name in variants}


def product_block(product, ld, rows, cols):
    """The rows x cols block of floats at address ``product``, rows ``ld`` floats apart."""
    flat = np.ctypeslib.as_array((ctypes.c_float * (ld * (rows - 1) + cols)).from_address(product))
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4 * ld, 4))


@pytest.mark.parametrize("name", ["ser", "par"])
@pytest.mark.parametrize("M,N,K,ta,tb", [(1, 1, 1, 0, 0), (37, 65, 130, 1, 0), (30, 200, 40, 0, 1),
                                         (70, 3, 17, 1, 1), (9, 21, 0, 0, 0),
                                         (13, 20, 300, 1, 0), (7, 5, 97, 0, 1)])  # split over K
@pytest.mark.parametrize("with_prefetch", [False, True])
def test_epilogue_sees_each_final_block_once(epilogue_gemms, name, M, N, K, ta, tb, with_prefetch):
    """Every element of C is in exactly one block handed to the epilogue, and when the hook
    runs its block already holds the final product (here the hook scales it by -2). The
    prefetch hook (optional) is asked only for blocks inside C, each before its epilogue."""
    rng = np.random.default_rng(M * N + K)
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    C = np.full((M, N), 5.0, np.float32)
    expected = 0.5 * (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64) + 2.0 * 5.0
    seen = np.zeros((M, N), np.int32)
    mismatches = []
    prefetched = []

    def hook(context, row0, rows, col0, cols, product, ld):
        assert context == 1234
        block = C[row0:row0 + rows, col0:col0 + cols]
        if (product, ld) != (block.ctypes.data, N):
            mismatches.append(("product not at its block of C", row0, rows, col0, cols))
        if not np.allclose(block, expected[row0:row0 + rows, col0:col0 + cols], rtol=1e-4, atol=1e-4):
            mismatches.append((row0, rows, col0, cols))
        seen[row0:row0 + rows, col0:col0 + cols] += 1
        block *= -2.0

    def prefetch(context, row0, rows, col0, cols, product, ld):
        assert context == 1234
        prefetched.append((row0, rows, col0, cols))
        if not (0 <= row0 and 0 < rows and row0 + rows <= M and 0 <= col0 and 0 < cols and col0 + cols <= N):
            mismatches.append(("prefetch outside C", row0, rows, col0, cols))
        elif np.any(seen[row0:row0 + rows, col0:col0 + cols]):
            mismatches.append(("prefetch after the epilogue", row0, rows, col0, cols))

    epilogue_gemms[name](ta, tb, M, N, K, 0.5, A.ctypes.data, A.shape[1], B.ctypes.data, B.shape[1], 2.0,
                         C.ctypes.data, N, EPILOGUE(hook), 1234, EPILOGUE(prefetch) if with_prefetch else EPILOGUE(), 0)
    assert not mismatches, f"blocks handed over before they were final: {mismatches}"
    assert np.all(seen == 1), "some element was finished twice or never"
    tol_ok(C, -2.0 * expected)
    if with_prefetch and name == "par" and (M, N) == (30, 200):
        # blocks of 24 rows, slices wider than NR on either tile (a slice of at most NR columns
        # takes the narrow path, which asks for nothing): the next block's are asked for
        assert prefetched


@pytest.mark.parametrize("name,M,N,K,ta,tb,in_workspace", [
    ("ser", 37, 200, 130, 1, 0, True), ("ser", 300, 70, 40, 0, 1, True), ("ser", 256, 1024, 256, 1, 0, True),
    ("ser", 30, 20, 50, 1, 0, False),     # at most NR columns, A transposed: the narrow path writes C
    ("ser", 13, 200, 300, 1, 0, False),   # K over two blocks: C holds the first block's sums
    ("par", 30, 200, 12, 0, 0, True), ("par", 200, 40, 9, 1, 1, True),  # split over N, over M
    ("par", 70, 65, 40, 1, 0, False), ("par", 7, 5, 97, 0, 1, False)])  # K over blocks; split over K
def test_a_private_product_reaches_the_epilogue_from_the_workspace(epilogue_gemms, name, M, N, K, ta, tb,
                                                                   in_workspace):
    """With private_product set, each block's product reaches the epilogue (through its
    pointer and row stride) exactly once and correct; a product final after one K block never
    touches C, any other is computed in C as before."""
    rng = np.random.default_rng(M + N * K)
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    C = np.full((M, N), 5.0, np.float32)
    expected = 0.5 * (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    seen = np.zeros((M, N), np.int32)
    got = np.full((M, N), np.nan, np.float32)

    def hook(context, row0, rows, col0, cols, product, ld):
        assert cols <= ld
        got[row0:row0 + rows, col0:col0 + cols] = product_block(product, ld, rows, cols)
        seen[row0:row0 + rows, col0:col0 + cols] += 1

    epilogue_gemms[name](ta, tb, M, N, K, 0.5, A.ctypes.data, A.shape[1], B.ctypes.data, B.shape[1], 0.0,
                         C.ctypes.data, N, EPILOGUE(hook), 0, EPILOGUE(), 1)
    assert np.all(seen == 1), "some element was finished twice or never"
    tol_ok(got, expected)
    if in_workspace:
        assert np.all(C == 5.0), "C was written"
    else:
        tol_ok(C, expected)


def test_empty_is_a_noop(kernels):
    for f in kernels.values():
        # null pointers: nothing may be touched
        f(0, 0, 0, 5, 5, 1.0, None, 5, None, 5, 0.0, None, 5)
        f(1, 1, 5, 0, 5, 1.0, None, 5, None, 5, 0.0, None, 5)


# ----------------------------------------------------------------- batched
BATCHED_ARGTYPES = [ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                    ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]


@pytest.fixture(scope="module")
def batched():
    """Batched GEMMs: dealt out whole to 3 cores from the first flop on ("deal"), each product
    split over 2 cores itself ("split": parallel_min 1, so no product is small), one core."""
    mod = ir.Module(name="test_gemm_batched")
    variants = {"deal": dict(nthreads=3, parallel_min_mnk=0, kc=16, mc=24, nc=64),
                "split": dict(nthreads=2, parallel_min_mnk=1), "one": dict(nthreads=1)}
    for name, kw in variants.items():
        G.emit_gemm(mod, f"g_{name}", batched_name=f"b_{name}", **kw)
    cm = T.compile_ir(str(mod), opt_level=1, name="test_gemm_batched")
    return {name: cm.function(f"b_{name}", None, *BATCHED_ARGTYPES) for name in variants}


@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
@pytest.mark.parametrize("shared", [None, "a", "b"])
def test_batched_products(batched, ta, tb, shared):
    rng = np.random.default_rng(20 + 4 * ta + 2 * tb)
    for (batch, M, N, K), name in itertools.product([(1, 3, 5, 7), (5, 17, 9, 33), (7, 40, 35, 20)], batched):
        A = rng.standard_normal((1 if shared == "a" else batch,) + ((K, M) if ta else (M, K))).astype(np.float32)
        B = rng.standard_normal((1 if shared == "b" else batch,) + ((N, K) if tb else (K, N))).astype(np.float32)
        Cfull = np.full((batch + 1, M, N), np.nan, np.float32)  # beta 0 never reads C; the extra product stays
        opA = np.swapaxes(A, 1, 2) if ta else A
        opB = np.swapaxes(B, 1, 2) if tb else B
        expected = 0.5 * (opA.astype(np.float64) @ opB)
        batched[name](ta, tb, M, N, K, 0.5, A.ctypes.data, A.shape[2], 0 if shared == "a" else A[0].size,
                      B.ctypes.data, B.shape[2], 0 if shared == "b" else B[0].size, 0.0,
                      Cfull.ctypes.data, N, M * N, batch)
        tol_ok(Cfull[:batch], np.broadcast_to(expected, (batch, M, N)))
        assert np.isnan(Cfull[batch]).all(), "wrote past the last product"


def test_batched_edge_cases(batched):
    A = np.ones((3, 2, 2), np.float32)
    for f in batched.values():
        f(0, 0, 2, 2, 2, 1.0, None, 2, 4, None, 2, 4, 0.0, None, 2, 4, 0)   # no products: nothing touched
        C = np.full((3, 2, 2), 5.0, np.float32)
        f(0, 0, 2, 2, 2, 0.0, A.ctypes.data, 2, 4, A.ctypes.data, 2, 4, 0.5, C.ctypes.data, 2, 4, 3)
        assert (C == 2.5).all(), "alpha 0 scales each C by beta"
        C = np.full((3, 2, 2), 5.0, np.float32)
        f(0, 0, 2, 2, 0, 1.0, A.ctypes.data, 2, 4, A.ctypes.data, 2, 4, 0.0, C.ctypes.data, 2, 4, 3)
        assert (C == 0.0).all(), "K 0 with beta 0 zeroes each C"


# ----------------------------------------------------------------- guard pages
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PAGE = mmap.PAGESIZE


class Guarded:
    """A float32 array that ends exactly where an inaccessible page begins (and
    starts a page after another one): reading or writing one element past
    either end faults."""

    def __init__(self, rows, cols):
        n = rows * cols
        npages = (4 * n + _PAGE - 1) // _PAGE
        self.mm = mmap.mmap(-1, (npages + 2) * _PAGE)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        base = ctypes.addressof(self._anchor)
        assert _libc.mprotect(base, _PAGE, 0) == 0
        assert _libc.mprotect(base + (npages + 1) * _PAGE, _PAGE, 0) == 0
        offset = (npages + 1) * _PAGE - 4 * n
        self.array = np.frombuffer(self.mm, np.float32, count=n, offset=offset).reshape(rows, cols)


@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), repeat=2)))
def test_no_out_of_bounds_access(kernels, ta, tb):
    rng = np.random.default_rng(11)
    keep = []
    for M, N, K in itertools.product((1, 3, 17, 33), repeat=3):
        ga = Guarded(*((K, M) if ta else (M, K)))
        gb = Guarded(*((N, K) if tb else (K, N)))
        gc = Guarded(M, N)
        keep += [ga, gb, gc]
        A, B, C = ga.array, gb.array, gc.array
        A[...] = rng.standard_normal(A.shape)
        B[...] = rng.standard_normal(B.shape)
        C[...] = rng.standard_normal(C.shape)
        expected = 0.5 * ((A.T if ta else A).astype(np.float64) @ (B.T if tb else B)) - C
        for name in ("ser", "par"):
            Cw = C.copy()
            C[...] = Cw
            kernels[name](ta, tb, M, N, K, 0.5, A.ctypes.data, A.shape[1], B.ctypes.data,
                          B.shape[1], -1.0, C.ctypes.data, N)
            tol_ok(C, expected)
            C[...] = Cw


# ----------------------------------------------------------------- optimised build
def test_o3_default_build():
    mod = ir.Module(name="test_gemm_o3")
    G.emit_gemm(mod, "kc_sgemm")
    cm = T.compile_ir(str(mod), opt_level=3, name="test_gemm_o3")
    f = cm.function("kc_sgemm", None, *ARGTYPES)
    rng = np.random.default_rng(6)
    for ta, tb in itertools.product((0, 1), repeat=2):
        run_case(f, rng, 33, 100, 17, ta, tb, alpha=1.0, beta=1.0, pads=(1, 0, 2))
    # big enough for the default threshold: runs on 2 threads where available
    run_case(f, rng, 300, 280, 260, 0, 0, alpha=1.0, beta=0.0, c_fill=np.nan)
    run_case(f, rng, 300, 280, 260, 1, 1, alpha=-0.5, beta=0.5, pads=(2, 3, 4))


# ----------------------------------------------------------------- the runner
def _runner_module(nparts_override=None, failing_create=False):
    i64 = ir.IntType(64)
    mod = ir.Module(name="runner")
    if failing_create:
        # a module-local pthread_create that always fails (EAGAIN): every part
        # must then run inline on the calling thread
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [i64.as_pointer(), i8p,
                                                ir.FunctionType(i8p, [i8p]).as_pointer(), i8p])
        stub = ir.Function(mod, fnty, name="pthread_create")
        stub.linkage = "internal"
        ir.IRBuilder(stub.append_basic_block()).ret(ir.Constant(ir.IntType(32), 11))
    part = ir.Function(mod, TH.PART_FN_TYPE, name="part")
    ctx, p, n = part.args
    b = ir.IRBuilder(part.append_basic_block())
    out = b.bitcast(ctx, i64.as_pointer())
    slot = b.gep(out, [p])
    # out[p] += 1 + 1000 * nparts  (detects parts run twice or with a wrong count)
    b.store(b.add(b.load(slot), b.add(ir.Constant(i64, 1), b.mul(n, ir.Constant(i64, 1000)))), slot)
    b.ret_void()
    run = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i64]),
                      name="run")
    b = ir.IRBuilder(run.append_basic_block())
    TH.emit_parallel_call(b, part, run.args[0], run.args[1])
    b.ret_void()
    cm = T.compile_ir(str(mod), opt_level=1, name="runner")
    return cm.function("run", None, ctypes.c_void_p, ctypes.c_int64)


@pytest.mark.parametrize("failing_create", [False, True])
def test_parallel_runner_runs_every_part_once(failing_create):
    run = _runner_module(failing_create=failing_create)
    for nparts in (1, 2, 3, 5, 64, 100):
        out = np.zeros(TH.MAX_PARTS + 8, np.int64)
        run(out.ctypes.data, nparts)
        used = min(max(nparts, 1), TH.MAX_PARTS)
        assert np.all(out[:used] == 1 + 1000 * used), (nparts, out[:used])
        assert np.all(out[used:] == 0)
    out = np.zeros(4, np.int64)
    run(out.ctypes.data, 0)  # nparts <= 1: part 0 of 1
    assert out[0] == 1001 and np.all(out[1:] == 0)


def test_threads_available():
    assert TH.threads_available()
    assert TH.default_nthreads() >= 1


# ----------------------------------------------------------------- packing
PACKS = {(12, 16): "pack_mr_avx512", (32, 16): "pack_nr_avx512", (6, 8): "pack_mr_avx2", (16, 8): "pack_nr_avx2"}


@pytest.fixture(scope="module")
def packs():
    mod = ir.Module(name="test_pack")
    for (R, vw), name in PACKS.items():
        G._emit_pack(mod, name, R, vw).linkage = ""
    cm = T.compile_ir(str(mod), opt_level=1, name="test_pack")
    types = (ctypes.c_bool, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
    return {key: cm.function(name, None, *types) for key, name in PACKS.items()}, cm


def reference_pack(S, R):
    """dst[p*R*kc + k*R + i] = S(p*R + i, k), zero past the last row."""
    nrows, kc = S.shape
    panels = -(-nrows // R)
    padded_rows = np.zeros((panels * R, kc), np.float32)
    padded_rows[:nrows] = S
    return padded_rows.reshape(panels, R, kc).transpose(0, 2, 1).reshape(-1)


@pytest.mark.parametrize("R,vw", list(PACKS))
@pytest.mark.parametrize("contig", [False, True])
def test_pack_matches_the_reference(packs, R, vw, contig):
    # the transposing pack (contig False) moves whole panels in vw x vw register transposes and
    # the rest row by row: sizes on both sides of R and vw, with NaN padding between rows
    functions, _ = packs
    rng = np.random.default_rng(R + vw)
    for nrows, kc in [(1, 1), (R, vw), (R, vw + 3), (2 * R + 1, 2 * vw), (R - 1, 3 * vw + 1), (3 * R, 5)]:
        S = rng.standard_normal((nrows, kc)).astype(np.float32)
        stored = S.T if contig else S
        full = np.full((stored.shape[0], stored.shape[1] + 7), np.nan, np.float32)
        full[:, :stored.shape[1]] = stored
        expected = reference_pack(S, R)
        dst = np.full(expected.size + 16, 99.0, np.float32)  # the tail: nothing may be written there
        functions[(R, vw)](contig, nrows, kc, full.ctypes.data, full.shape[1], dst.ctypes.data)
        np.testing.assert_array_equal(dst[:expected.size], expected, err_msg=f"{nrows} x {kc}")
        assert (dst[expected.size:] == 99.0).all(), f"{nrows} x {kc}: wrote past the packed panels"
