"""The matmul template of the LLVM backend: (batched) products through the support library's
SGEMM (codegen/llvm/gemm.py). Every other non-contraction kernel is a target-neutral
description (kcompiler/schedule/) that render.py renders."""
from ...ir.registry import lowering
from ...ir.types import num_elements
from .irutil import c64, for_range


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
        rows = num_elements(batch) * M
        k.call_gemm(False, tb, rows, N, K, A, a_cols, B, b_cols, C, N)
        return
    if len(a_t.shape) == 2 and len(b_t.shape) == 2:
        # one product (a weight gradient A^T @ dY): through call_gemm, where a fused
        # contraction's epilogue (the optimizer update) runs block by block on both cores; as
        # a batch of one it ran afterwards in one pass on one core (W5: 2 Mcycles a step)
        k.call_gemm(ta, tb, M, N, K, A, a_cols, B, b_cols, C, N)
        return
    a_batch = num_elements(a_t.shape[:-2])
    b_batch = num_elements(b_t.shape[:-2])
    nb = num_elements(batch)
    if a_batch in (nb, 1) and b_batch in (nb, 1):
        # equal strides: one call, which spreads small products over the cores by whole products
        k.call_batched_gemm(ta, tb, M, N, K, A, a_cols, a_rows * a_cols if a_batch == nb else 0,
                            B, b_cols, b_rows * b_cols if b_batch == nb else 0, C, N, M * N, nb)
        return
    # batch shapes broadcast against each other ((2, 1) with (1, 3)): each operand's product
    # index from the output's batch index, axis by axis
    with for_range(b, nb, name="batch") as i:
        ai = _broadcast_index(b, i, batch, a_t.shape[:-2])
        bi = _broadcast_index(b, i, batch, b_t.shape[:-2])
        Ai = b.gep(A, [b.mul(ai, c64(a_rows * a_cols))], inbounds=True)
        Bi = b.gep(B, [b.mul(bi, c64(b_rows * b_cols))], inbounds=True)
        Ci = b.gep(C, [b.mul(i, c64(M * N))], inbounds=True)
        k.call_gemm(ta, tb, M, N, K, Ai, a_cols, Bi, b_cols, Ci, N)


def _broadcast_index(b, i, out_batch, operand_batch):
    """The flat index into ``operand_batch`` (right-aligned, size-1 axes broadcast) of flat
    index ``i`` of ``out_batch``."""
    operand_batch = (1,) * (len(out_batch) - len(operand_batch)) + tuple(operand_batch)
    index, out_stride, stride = c64(0), 1, 1
    for out_dim, dim in zip(reversed(out_batch), reversed(operand_batch)):
        if dim != 1:
            coord = b.urem(b.udiv(i, c64(out_stride)), c64(out_dim))
            index = b.add(index, b.mul(coord, c64(stride)))
        out_stride *= out_dim
        stride *= dim
    return index
