"""Kernel lowerings of the non-element-wise core ops: data movement, matmul (through the
generated SGEMM), gather, scatter-add and the label range check. (Reductions and the softmax
family are kernel descriptions: kcompiler/schedule/reduce.py.)

Each is ``fn(k: KernelBuilder)`` registered for target 'llvm'; shapes are static, so
loop bounds and strides are constants in the generated code.
"""
import llvmlite.ir as ir

from ...ir.registry import lowering
from .irutil import (MEM_TYPE, c64, contiguous_strides, f32, for_range, i1, i64, linear_index, load, store)
from .kernel import STATUS_INDEX_OUT_OF_RANGE, _nest


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


# ---- data movement ---------------------------------------------------------------------------

def _gather_copy(k, out_shape, source_index):
    """out[idx] = in[source_index(idx)] over the output shape."""
    b = k.b
    dtype = k.out_types[0].dtype
    out_strides = contiguous_strides(out_shape)

    def body(idx):
        v = load(b, k.inputs[0], source_index(idx), dtype)
        store(b, v, k.outputs[0], linear_index(b, idx, out_strides), dtype)
    _nest(b, list(out_shape), body)


@lowering("llvm", "transpose")
def _transpose(k):
    perm = k.attrs["perm"]
    in_strides = contiguous_strides(k.in_types[0].shape)
    _gather_copy(k, k.out_types[0].shape, lambda idx: linear_index(k.b, idx, [in_strides[p] for p in perm]))


@lowering("llvm", "broadcast_to")
def _broadcast_to(k):
    from .irutil import broadcast_strides
    out_shape = k.out_types[0].shape
    strides = broadcast_strides(k.in_types[0].shape, out_shape)
    _gather_copy(k, out_shape, lambda idx: linear_index(k.b, idx, strides))


@lowering("llvm", "slice")
def _slice(k):
    b = k.b
    in_strides = contiguous_strides(k.in_types[0].shape)
    begin = k.attrs["begin"]
    offset = sum(s * st for s, st in zip(begin, in_strides))
    _gather_copy(k, k.out_types[0].shape, lambda idx: b.add(linear_index(b, idx, in_strides), c64(offset)))


@lowering("llvm", "pad")
def _pad(k):
    b = k.b
    dtype = k.out_types[0].dtype
    out_shape, in_shape = k.out_types[0].shape, k.in_types[0].shape
    pads = k.attrs["pads"]
    _fill(k, k.outputs[0], _num(out_shape), k.attrs.get("value", 0.0), dtype)
    in_strides, out_strides = contiguous_strides(in_shape), contiguous_strides(out_shape)
    offset = sum(lo * st for (lo, _), st in zip(pads, out_strides))

    def body(idx):
        v = load(b, k.inputs[0], linear_index(b, idx, in_strides), dtype)
        store(b, v, k.outputs[0], b.add(linear_index(b, idx, out_strides), c64(offset)), dtype)
    _nest(b, list(in_shape), body)


@lowering("llvm", "concatenate")
def _concatenate(k):
    b = k.b
    dtype = k.out_types[0].dtype
    out_shape = k.out_types[0].shape
    axis = k.attrs["axis"] % len(out_shape)
    out_strides = contiguous_strides(out_shape)
    start = 0
    for ptr, t in zip(k.inputs, k.in_types):
        in_strides = contiguous_strides(t.shape)
        offset = start * out_strides[axis]

        def body(idx, ptr=ptr, in_strides=in_strides, offset=offset):
            v = load(b, ptr, linear_index(b, idx, in_strides), dtype)
            store(b, v, k.outputs[0], b.add(linear_index(b, idx, out_strides), c64(offset)), dtype)
        _nest(b, list(t.shape), body)
        start += t.shape[axis]


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


# ---- gather / scatter-add (Embedding) ---------------------------------------------------------

@lowering("llvm", "gather")
def _gather(k):
    b = k.b
    table_t, idx_t = k.in_types
    rows, width = table_t.shape
    table, idx = k.inputs
    out = k.outputs[0]
    n = _num(idx_t.shape)
    with for_range(b, n, name="g") as i:
        row = b.sext(load(b, idx, i, idx_t.dtype), i64) if idx_t.dtype == "int32" else load(b, idx, i, idx_t.dtype)
        ok = b.and_(b.icmp_signed(">=", row, c64(0)), b.icmp_signed("<", row, c64(rows)))
        with b.if_else(ok) as (then, otherwise):
            with then:
                with for_range(b, width, name="c") as c:
                    v = load(b, table, b.add(b.mul(row, c64(width)), c), "float32")
                    store(b, v, out, b.add(b.mul(i, c64(width)), c), "float32")
            with otherwise:
                k.fail(STATUS_INDEX_OUT_OF_RANGE, row)
                with for_range(b, width, name="z") as c:
                    store(b, ir.Constant(f32, 0.0), out, b.add(b.mul(i, c64(width)), c), "float32")


@lowering("llvm", "scatter_add")
def _scatter_add(k):
    b = k.b
    idx_t, upd_t = k.in_types
    rows, width = k.out_types[0].shape
    idx, upd = k.inputs
    out = k.outputs[0]
    _fill(k, out, rows * width, 0.0, "float32")
    n = _num(idx_t.shape)
    with for_range(b, n, name="s") as i:
        row = b.sext(load(b, idx, i, idx_t.dtype), i64) if idx_t.dtype == "int32" else load(b, idx, i, idx_t.dtype)
        ok = b.and_(b.icmp_signed(">=", row, c64(0)), b.icmp_signed("<", row, c64(rows)))
        with b.if_then(ok):
            with for_range(b, width, name="c") as c:
                at = b.add(b.mul(row, c64(width)), c)
                v = b.fadd(load(b, out, at, "float32"), load(b, upd, b.add(b.mul(i, c64(width)), c), "float32"))
                store(b, v, out, at, "float32")


@lowering("llvm", "check_index")
def _check_index(k):
    b = k.b
    (t,) = k.in_types
    with for_range(b, _num(t.shape), name="i") as i:
        value = load(b, k.inputs[0], i, t.dtype)
        store(b, value, k.outputs[0], i, t.dtype)
        wide = b.sext(value, i64) if t.dtype == "int32" else value
        ok = b.and_(b.icmp_signed(">=", wide, c64(0)), b.icmp_signed("<", wide, c64(k.attrs["limit"])))
        with b.if_then(b.not_(ok), likely=False):
            k.fail(STATUS_INDEX_OUT_OF_RANGE, wide)
