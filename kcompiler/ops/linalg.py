"""Contractions: matmul (batched, with transposes folded in) and bias_add."""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import broadcast_shapes, dims_equal
from .elementwise import unbroadcast


def _mat_dims(shape, transpose):
    rows, cols = shape[-2], shape[-1]
    return (cols, rows) if transpose else (rows, cols)


def _matmul_rule(in_types, attrs):
    a, b = in_types
    ta, tb = attrs.get("transpose_a", False), attrs.get("transpose_b", False)
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul: operands must have rank >= 2, got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul: operand dtypes differ ({a.dtype} and {b.dtype})")
    m, k = _mat_dims(a.shape, ta)
    k2, n = _mat_dims(b.shape, tb)
    if not dims_equal(k, k2):
        raise ShapeError(f"matmul: contraction dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}"
                         f" (transpose_a={ta}, transpose_b={tb})")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (m, n), a.dtype)


def _matmul_vjp(b, nid, dc):
    x, y = b.operands(nid)
    attrs = b.attrs(nid)
    ta, tb = attrs.get("transpose_a", False), attrs.get("transpose_b", False)
    if ta:
        gx = b.op("matmul", y, dc, transpose_a=tb, transpose_b=True)
    else:
        gx = b.op("matmul", dc, y, transpose_a=False, transpose_b=not tb)
    if len(b.shape(y)) == 2 and len(b.shape(x)) > 2 and not ta:
        # a weight applied to every row of a batch ((..., M, K) @ (K, N)): its gradient is one
        # product over all the rows, K x (rows) @ (rows) x N, not one product per batch entry
        # followed by a sum over the batch (a batch-sized buffer and a second pass over it)
        rows_x = b.op("reshape", x, shape=(-1, b.shape(x)[-1]))
        rows_dc = b.op("reshape", dc, shape=(-1, b.shape(dc)[-1]))
        gy = (b.op("matmul", rows_dc, rows_x, transpose_a=True, transpose_b=False) if tb
              else b.op("matmul", rows_x, rows_dc, transpose_a=True, transpose_b=False))
        return [unbroadcast(b, gx, b.shape(x)), gy]
    if tb:
        gy = b.op("matmul", dc, x, transpose_a=True, transpose_b=ta)
    else:
        gy = b.op("matmul", x, dc, transpose_a=not ta, transpose_b=False)
    return [unbroadcast(b, gx, b.shape(x)), unbroadcast(b, gy, b.shape(y))]


register("matmul", shape=_matmul_rule, vjp=_matmul_vjp, kind="contraction",
         doc="op(a) @ op(b) over the last two axes, op = transpose when attrs say so")


def _bias_add_rule(in_types, attrs):
    x, bias = in_types
    if bias.rank != 1 or not dims_equal(x.shape[-1], bias.shape[0]):
        raise ShapeError(f"bias_add: bias of shape {fmt_shape(bias.shape)} does not match the last "
                         f"dimension of {fmt_shape(x.shape)}")
    return TensorType(x.shape, x.dtype)


def _bias_add_vjp(b, nid, dy):
    rank = len(b.shape(dy))
    return [dy, b.op("sum", dy, axes=tuple(range(rank - 1)), keepdims=False)]


register("bias_add", shape=_bias_add_rule, vjp=_bias_add_vjp, kind="elementwise",
         doc="x + bias along the last axis")
