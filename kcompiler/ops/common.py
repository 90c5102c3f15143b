"""Helpers shared by the shape rules of several op families."""
from ..errors import ShapeError
from ..ir.types import TensorType, fmt_shape


def broadcast_shapes(op, *shapes):
    """numpy broadcasting, with None (symbolic) dimensions."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError(f"{op}: cannot broadcast shapes " + " and ".join(fmt_shape(s) for s in shapes))
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axis(op, axis, rank):
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def normalize_axes(op, axes, rank):
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted({normalize_axis(op, a, rank) for a in axes}))


def expect_rank(op, t, rank):
    if t.rank != rank:
        raise ShapeError(f"{op}: expects an operand of rank {rank}, got shape {fmt_shape(t.shape)}")


def expect_float(op, t):
    if not t.dtype.startswith("float"):
        raise ShapeError(f"{op}: expects a float tensor, got {t.dtype}")


def same_type(in_types, attrs):
    return TensorType(in_types[0].shape, in_types[0].dtype)


def dims_equal(a, b):
    return a is None or b is None or a == b
