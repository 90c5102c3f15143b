"""The explicit vector code of the recurrent kernels: the per-step products
(kcompiler.codegen.llvm.rows_product) against numpy over odd shapes, both vector widths and
every row count up to a few tiles, with C's other columns untouched; and the scalar math
(ScalarEmitter / render.scalar) on vectors, which must give the scalar code's bits lane by
lane (hence its accuracy) over a dense sweep with NaN, infinities, zeros and subnormals."""
import ctypes
import math

import llvmlite.ir as ir
import numpy as np
import pytest

from kcompiler.codegen.llvm import jit
from kcompiler.codegen.llvm import rnn as rnn_codegen
from kcompiler.codegen.llvm.irutil import f32, for_range, i64, void
from kcompiler.codegen.llvm.render import scalar
from kcompiler.codegen.llvm.rows_product import Shape, fptr, rows_product, vload, vstore

WIDTHS = (8, 16)
ROWS = tuple(range(1, 14))  # the row counts the products are made for


def product_shapes(width):
    """(name, shape, K, gates, units, C row length, kind) of products like the kernels':
    kind "fwd" (A rows @ packed gate columns), "bwd" (A @ packed transposed matrix) or
    "sum" (A^T @ gate columns, A read with lda 1 and ldk its row length)."""
    out = []
    for units, gates in ((1, 4), (5, 3), (width, 1), (2 * width + 3, 4), (3 * width, 3)):
        up = -(-units // width) * width
        cols = rnn_codegen.column_vectors(width, units, range(gates), up, units)
        out.append((f"fwd-u{units}-g{gates}", Shape(ROWS, units + 1, gates * up, gates * units + 7, width, *cols),
                    units, gates, units, gates * units + 7, "fwd"))
        cols = rnn_codegen.column_vectors(width, units, [0], 0, 0)
        for acc in (False, True):
            out.append((f"bwd-u{units}-g{gates}-acc{int(acc)}",
                        Shape(ROWS, gates * up, up, units, width, *cols, accumulate=acc),
                        gates * up, gates, units, units, "bwd"))
        cols = rnn_codegen.column_vectors(width, units, range(gates), up, units)
        out.append((f"sum-u{units}-g{gates}", Shape(ROWS, 1, gates * up, gates * units, width, *cols, accumulate=True,
                                                    ldk=15), None, gates, units, gates * units, "sum"))
    return out


@pytest.fixture(scope="module")
def products():
    """Every shape of both widths compiled into one module: {name: (shape, ..., function)}."""
    module = ir.Module(name="test_rows_product")
    cases = {}
    for width in WIDTHS:
        for name, shape, *rest in product_shapes(width):
            fn = rows_product(module, shape)
            entry = ir.Function(module, fn.ftype, name=f"w{width}-{name}")
            b = ir.IRBuilder(entry.append_basic_block())
            b.call(fn, entry.args)
            b.ret_void()
            cases[f"w{width}-{name}"] = (shape, *rest)
    lib = jit.compile_ir(str(module), opt_level=1, name="test_rows_product")
    return {name: case + (lib.function(name, None, ctypes.c_int64, ctypes.c_int64, *[ctypes.c_void_p] * 3),)
            for name, case in cases.items()}


def packed_columns(w, gates, units, up):
    """w (K, gates*units) with each gate's columns padded to ``up`` with zeros."""
    out = np.zeros((w.shape[0], gates, up), np.float32)
    out[:, :, :units] = w.reshape(w.shape[0], gates, units)
    return out.reshape(w.shape[0], gates * up)


@pytest.mark.parametrize("width", WIDTHS)
def test_products_match_numpy_and_touch_only_their_columns(products, width):
    rng = np.random.default_rng(0)
    for name, (shape, K, gates, units, ldc, kind, fn) in products.items():
        if not name.startswith(f"w{width}-"):
            continue
        up = -(-units // width) * width
        for rows in ROWS + (14,):  # 14: not a count of the shape: nothing is computed
            if kind == "fwd":    # C = A[:, :K] @ W, W packed by gate
                a = rng.standard_normal((rows, shape.lda)).astype(np.float32)
                w = rng.standard_normal((K, gates * units)).astype(np.float32)
                k, packed, product = K, packed_columns(w, gates, units, up), a[:, :K] @ w.astype(np.float64)
            elif kind == "bwd":  # C (+)= A[:, :K] @ P with P (gates*up, up): zero rows and columns padded
                a = rng.standard_normal((rows, shape.lda)).astype(np.float32)
                p = np.zeros((K, up), np.float32)
                p[:, :units] = rng.standard_normal((K, units))
                k, packed, product = K, p, a[:, :K] @ p[:, :units].astype(np.float64)
            else:                # C += A^T @ D: A (k, 15) read with stride ldk, D (k, gates*up) padded by gate
                k = rows + 2
                a = rng.standard_normal((k, shape.ldk)).astype(np.float32)
                d = rng.standard_normal((k, gates * units)).astype(np.float32)
                packed = packed_columns(d, gates, units, up)
                product = a[:, :rows].T.astype(np.float64) @ d
            c = np.full((rows, ldc), 7.0, np.float32)
            before = c.copy()
            fn(rows, k, a.ctypes.data, packed.ctypes.data, c.ctypes.data)
            expected = before.astype(np.float64)
            if rows in ROWS:
                expected[:, :product.shape[1]] = product + (before[:, :product.shape[1]] if shape.accumulate else 0)
            np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5 * math.sqrt(k),
                                       err_msg=f"{name}, {rows} rows")


# ---- scalar math on vectors --------------------------------------------------------------------

UNARY = ["exp", "tanh", "sigmoid", "hard_sigmoid", "relu", "softplus", "elu"]
GRADS = ["tanh_grad", "sigmoid_grad", "hard_sigmoid_grad", "relu_grad"]


def sweep():
    """float32 values: a dense log-spaced sweep of both signs, then the special values."""
    mags = np.geomspace(1e-6, 120, 60000, dtype=np.float64)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 3.4e38, -3.4e38, 88.7, 89.5, -103.9, -104.5]
    values = np.concatenate([mags, -mags, special]).astype(np.float32)
    pad = -len(values) % 16
    return np.concatenate([values, np.zeros(pad, np.float32)])


@pytest.fixture(scope="module")
def math_module():
    """For each op: f_scalar and f_v8 / f_v16 over arrays (the grads take dy = x / 3)."""
    module = ir.Module(name="test_vector_math")
    for op in UNARY + GRADS:
        for width in (1,) + WIDTHS:
            fn = ir.Function(module, ir.FunctionType(void, [i64, fptr, fptr]), name=f"{op}_{width}")
            b = ir.IRBuilder(fn.append_basic_block())
            n, x, y = fn.args
            with for_range(b, n, step=width) as i:
                p = b.gep(x, [i])
                v = b.load(p) if width == 1 else vload(b, p, width)
                third = ir.Constant(f32, 1 / 3) if width == 1 else ir.Constant(v.type, [1 / 3] * width)
                args = [v, b.fmul(v, third)] if op.endswith("_grad") else [v]
                r = scalar(b, op, args, **({"alpha": 1.0} if op.startswith("elu") else {}))
                if width == 1:
                    b.store(r, b.gep(y, [i]))
                else:
                    vstore(b, r, b.gep(y, [i]))
            b.ret_void()
    lib = jit.compile_ir(str(module), opt_level=1, name="test_vector_math")
    return lib


def run_math(lib, name, x):
    y = np.empty_like(x)
    lib.function(name, None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(x.size, x.ctypes.data, y.ctypes.data)
    return y


@pytest.mark.parametrize("op", UNARY + GRADS)
def test_vector_math_gives_the_scalar_bits(math_module, op):
    x = sweep()
    expected = run_math(math_module, f"{op}_1", x)
    for width in WIDTHS:
        got = run_math(math_module, f"{op}_{width}", x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{op}, {width} lanes")
        numbers = ~np.isnan(expected)  # any NaN is a NaN: its sign and payload carry nothing
        np.testing.assert_array_equal(got[numbers].view(np.int32), expected[numbers].view(np.int32),
                                      err_msg=f"{op}, {width} lanes")


def ulp_error(got, exact):
    """|got - exact| in units of the last place of float32 at ``exact`` (finite values)."""
    exact32 = exact.astype(np.float32)
    ulp = np.spacing(np.abs(exact32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / ulp


@pytest.mark.parametrize("op,exact,bound", [
    ("exp", np.exp, 2.0),
    ("tanh", np.tanh, 2.0),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), 2.0),
])
def test_vector_transcendentals_stay_within_two_ulp(math_module, op, exact, bound):
    """Over the sweep (float64 numpy as the exact value; results that are 0, subnormal or
    infinite compared exactly), with NaN in gives NaN out and infinities their limits."""
    x = sweep()
    got = run_math(math_module, f"{op}_16", x)
    with np.errstate(over="ignore", under="ignore"):
        want = exact(x.astype(np.float64))
    normal = np.isfinite(want) & (np.abs(want) >= np.finfo(np.float32).tiny) & (np.abs(want) < 3e38)
    assert ulp_error(got[normal], want[normal]).max() <= bound, op
    assert np.isnan(got[np.isnan(x)]).all()
    special = ~normal & ~np.isnan(x)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(got[special], want[special].astype(np.float32), rtol=0, atol=1e-38)
