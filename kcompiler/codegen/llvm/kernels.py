"""Kernel lowerings of the non-element-wise core ops: reductions, softmax and matmul (through
the generated SGEMM). Data movement and indexing are kernel descriptions (schedule/movement.py).

Each is ``fn(k: KernelBuilder)`` registered for target 'llvm'; shapes are static, so
loop bounds and strides are constants in the generated code.
"""
import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ops.common import normalize_axes
from .irutil import (MEM_TYPE, c64, contiguous_strides, f32, for_range, i1, i64, linear_index, load, store)
from .kernel import _nest
from .scalar import ScalarEmitter


def _num(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _fill(k, ptr, n, value, dtype):
    with for_range(k.b, n, name="fill") as i:
        store(k.b, _constant(value, dtype), ptr, i, dtype)


def _constant(value, dtype):
    t = MEM_TYPE[dtype] if dtype != "bool" else i1
    return ir.Constant(t, float(value) if dtype.startswith("float") else int(value))


# ---- reductions ------------------------------------------------------------------------------

def _reduction(kind):
    def lower(k):
        b = k.b
        x_t, out_t = k.in_types[0], k.out_types[0]
        shape = x_t.shape
        axes = normalize_axes(kind, k.attrs.get("axes"), len(shape))
        dtype = x_t.dtype
        x, out = k.inputs[0], k.outputs[0]
        n_out = _num(out_t.shape)
        init = {"sum": 0.0, "mean": 0.0, "max": float("-inf"), "min": float("inf")}[kind]
        _fill(k, out, n_out, init, dtype)
        kept = [d for i, d in enumerate(shape) if i not in axes]
        kept_strides = contiguous_strides(kept)
        out_strides, j = [], 0
        for i in range(len(shape)):
            if i in axes:
                out_strides.append(0)
            else:
                out_strides.append(kept_strides[j])
                j += 1
        in_strides = contiguous_strides(shape)
        e = ScalarEmitter(b)

        def body(idx):
            o = linear_index(b, idx, out_strides)
            acc = load(b, out, o, dtype)
            v = load(b, x, linear_index(b, idx, in_strides), dtype)
            new = {"sum": e.add, "mean": e.add, "max": e.maxf, "min": e.minf}[kind](acc, v)
            store(b, new, out, o, dtype)

        _nest(b, list(shape), body)
        if kind == "mean":
            count = _num([shape[a] for a in axes])
            with for_range(b, n_out, name="scale") as i:
                v = load(b, out, i, dtype)
                store(b, b.fmul(v, ir.Constant(v.type, 1.0 / count)), out, i, dtype)
    return lower


for _kind in ("sum", "mean", "max", "min"):
    lowering("llvm", _kind)(_reduction(_kind))


def _arg_extremum(better):
    def lower(k):
        b = k.b
        dtype = k.in_types[0].dtype
        shape = k.in_types[0].shape
        axis = k.attrs["axis"] % len(shape)
        outer, n, inner = _num(shape[:axis]), shape[axis], _num(shape[axis + 1:])
        x, out = k.inputs[0], k.outputs[0]
        with for_range(b, outer, name="o") as o, for_range(b, inner, name="j") as j:
            base = b.add(b.mul(o, c64(n * inner)), j)
            best_i = b.alloca(i64)
            best_v = b.alloca(x.type.pointee)
            b.store(c64(0), best_i)
            b.store(load(b, x, base, dtype), best_v)
            with for_range(b, n, start=1, name="a") as a:
                v = load(b, x, b.add(base, b.mul(a, c64(inner))), dtype)
                best = b.load(best_v)
                if dtype.startswith("float"):  # the first NaN wins and stays, as in np.argmax/argmin
                    wins = b.and_(b.fcmp_unordered(better, v, best), b.fcmp_ordered("ord", best, best))
                else:
                    wins = b.icmp_signed(better, v, best)
                with b.if_then(wins):
                    b.store(v, best_v)
                    b.store(a, best_i)
            store(b, b.trunc(b.load(best_i), ir.IntType(32)), out, b.add(b.mul(o, c64(inner)), j), "int32")
    return lower


lowering("llvm", "argmax")(_arg_extremum(">"))
lowering("llvm", "argmin")(_arg_extremum("<"))


# ---- softmax family: rows along one axis -----------------------------------------------------

def _rows(k, fn):
    """Call fn(offset_of(i), n) for every row along attrs.axis (offset_of maps a position
    along the axis to the element's flat index)."""
    b = k.b
    shape = k.in_types[0].shape
    axis = k.attrs.get("axis", -1) % len(shape)
    outer, n, inner = _num(shape[:axis]), shape[axis], _num(shape[axis + 1:])
    with for_range(b, outer, name="o") as o, for_range(b, inner, name="j") as j:
        base = b.add(b.mul(o, c64(n * inner)), j)
        fn(lambda i: b.add(base, b.mul(i, c64(inner))), n)


def _row_reduce(k, n, value_at, combine, init):
    b = k.b
    acc = b.alloca(f32)
    b.store(ir.Constant(f32, init), acc)
    with for_range(b, n, name="r") as i:
        b.store(combine(b.load(acc), value_at(i)), acc)
    return b.load(acc)


@lowering("llvm", "softmax")
def _softmax(k):
    b, e = k.b, ScalarEmitter(k.b)
    x, y = k.inputs[0], k.outputs[0]

    def row(at, n):
        m = _row_reduce(k, n, lambda i: load(b, x, at(i), "float32"), e.maxf, float("-inf"))
        with for_range(b, n, name="w") as i:
            store(b, e.exp(e.sub(load(b, x, at(i), "float32"), m)), y, at(i), "float32")
        s = _row_reduce(k, n, lambda i: load(b, y, at(i), "float32"), e.add, 0.0)
        inv = e.div(ir.Constant(f32, 1.0), s)
        with for_range(b, n, name="n") as i:
            store(b, e.mul(load(b, y, at(i), "float32"), inv), y, at(i), "float32")
    _rows(k, row)


@lowering("llvm", "log_softmax")
def _log_softmax(k):
    b, e = k.b, ScalarEmitter(k.b)
    x, y = k.inputs[0], k.outputs[0]

    def row(at, n):
        m = _row_reduce(k, n, lambda i: load(b, x, at(i), "float32"), e.maxf, float("-inf"))
        s = _row_reduce(k, n, lambda i: e.exp(e.sub(load(b, x, at(i), "float32"), m)), e.add, 0.0)
        shift = e.add(m, e.log(s))
        with for_range(b, n, name="w") as i:
            store(b, e.sub(load(b, x, at(i), "float32"), shift), y, at(i), "float32")
    _rows(k, row)


@lowering("llvm", "softmax_grad")
def _softmax_grad(k):
    b, e = k.b, ScalarEmitter(k.b)
    y, dy = k.inputs
    dx = k.outputs[0]

    def row(at, n):
        dot = _row_reduce(k, n, lambda i: e.mul(load(b, y, at(i), "float32"), load(b, dy, at(i), "float32")),
                          e.add, 0.0)
        with for_range(b, n, name="w") as i:
            yi = load(b, y, at(i), "float32")
            store(b, e.mul(yi, e.sub(load(b, dy, at(i), "float32"), dot)), dx, at(i), "float32")
    _rows(k, row)


@lowering("llvm", "log_softmax_grad")
def _log_softmax_grad(k):
    b, e = k.b, ScalarEmitter(k.b)
    y, dy = k.inputs
    dx = k.outputs[0]

    def row(at, n):
        total = _row_reduce(k, n, lambda i: load(b, dy, at(i), "float32"), e.add, 0.0)
        with for_range(b, n, name="w") as i:
            p = e.exp(load(b, y, at(i), "float32"))
            store(b, e.sub(load(b, dy, at(i), "float32"), e.mul(p, total)), dx, at(i), "float32")
    _rows(k, row)


# ---- matmul through the generated SGEMM ------------------------------------------------------

@lowering("llvm", "matmul")
def _matmul(k):
    b = k.b
    a_t, b_t = k.in_types
    out_shape = k.out_types[0].shape
    ta, tb = k.attrs.get("transpose_a", False), k.attrs.get("transpose_b", False)
    A, B = k.inputs
    C = k.outputs[0]
    a_rows, a_cols = a_t.shape[-2:]
    b_rows, b_cols = b_t.shape[-2:]
    M, N = out_shape[-2], out_shape[-1]
    K = a_rows if ta else a_cols
    batch = out_shape[:-2]
    if len(b_t.shape) == 2 and not ta:
        # (..., M, K) @ (K, N): one GEMM over all batch rows.
        rows = _num(batch) * M
        k.call_gemm(False, tb, rows, N, K, A, a_cols, B, b_cols, C, N)
        return
    a_batch = _num(a_t.shape[:-2])
    b_batch = _num(b_t.shape[:-2])
    nb = _num(batch)
    with for_range(b, nb, name="batch") as i:
        ai = i if a_batch == nb else c64(0)
        bi = i if b_batch == nb else c64(0)
        Ai = b.gep(A, [b.mul(ai, c64(a_rows * a_cols))], inbounds=True)
        Bi = b.gep(B, [b.mul(bi, c64(b_rows * b_cols))], inbounds=True)
        Ci = b.gep(C, [b.mul(i, c64(M * N))], inbounds=True)
        k.call_gemm(ta, tb, M, N, K, Ai, a_cols, Bi, b_cols, Ci, N)
