"""Data-movement ops: reshape, transpose, broadcast_to, concatenate, slice, pad, fill."""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import broadcast_shapes, dims_equal, normalize_axis
from .elementwise import unbroadcast


def _reshape_rule(in_types, attrs):
    """attrs.shape: ints; 0 copies the input's dimension at that position, -1 is inferred."""
    src = in_types[0].shape
    target = list(attrs["shape"])
    out = []
    for i, d in enumerate(target):
        if d == 0:
            if i >= len(src):
                raise ShapeError(f"reshape: 0 at position {i} but the input {fmt_shape(src)} has rank {len(src)}")
            out.append(src[i])
        else:
            out.append(d)
    if out.count(-1) > 1:
        raise ShapeError(f"reshape: more than one -1 in target shape {tuple(target)}")
    known_src = None not in src
    if -1 in out:
        # -1 is inferable when every other unknown cancels: the dims copied with 0.
        rest = [d for j, d in enumerate(out) if d != -1 and not (target[j] == 0)]
        src_rest = [d for j, d in enumerate(src) if not (j < len(target) and target[j] == 0)]
        if None in src_rest or None in rest:
            out[out.index(-1)] = None
        else:
            total, part = 1, 1
            for d in src_rest:
                total *= d
            for d in rest:
                part *= d
            if part == 0 or total % part:
                raise ShapeError(f"reshape: cannot reshape {fmt_shape(src)} into {tuple(target)}")
            out[out.index(-1)] = total // part
    elif known_src and None not in out:
        a = b = 1
        for d in src:
            a *= d
        for d in out:
            b *= d
        if a != b:
            raise ShapeError(f"reshape: cannot reshape {fmt_shape(src)} ({a} elements) into "
                             f"{fmt_shape(out)} ({b} elements)")
    return TensorType(tuple(out), in_types[0].dtype)


def _reshape_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [b.op("reshape", dy, shape=tuple(0 if d is None else d for d in b.shape(x)))]


register("reshape", shape=_reshape_rule, vjp=_reshape_vjp, kind="injective")


def _transpose_rule(in_types, attrs):
    t = in_types[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(t.rank)):
        raise ShapeError(f"transpose: perm {tuple(perm)} is not a permutation of the axes of {fmt_shape(t.shape)}")
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


def _transpose_vjp(b, nid, dy):
    perm = b.attrs(nid)["perm"]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [b.op("transpose", dy, perm=tuple(inverse))]


register("transpose", shape=_transpose_rule, vjp=_transpose_vjp, kind="injective")


def _broadcast_to_rule(in_types, attrs):
    """attrs.shape: ints; 0 keeps the operand's size on that axis (aligned from the right), so
    a symbolic batch dimension can pass through."""
    t = in_types[0]
    lead = len(attrs["shape"]) - t.rank
    if lead < 0 or any(d == 0 and i < lead for i, d in enumerate(attrs["shape"])):
        raise ShapeError(f"broadcast_to: cannot broadcast {fmt_shape(t.shape)} to {tuple(attrs['shape'])}")
    shape = tuple(t.shape[i - lead] if d == 0 else d for i, d in enumerate(attrs["shape"]))
    if broadcast_shapes("broadcast_to", t.shape, shape) != shape:
        raise ShapeError(f"broadcast_to: cannot broadcast {fmt_shape(t.shape)} to {fmt_shape(shape)}")
    return TensorType(shape, t.dtype)


register("broadcast_to", shape=_broadcast_to_rule,
         vjp=lambda b, nid, dy: [unbroadcast(b, dy, b.shape(b.operands(nid)[0]))], kind="injective")


def _concat_rule(in_types, attrs):
    first = in_types[0]
    axis = normalize_axis("concatenate", attrs["axis"], first.rank)
    total = 0
    for t in in_types:
        if t.rank != first.rank or t.dtype != first.dtype or any(
                not dims_equal(a, c) for i, (a, c) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ShapeError("concatenate: operands must match except along axis "
                             f"{attrs['axis']}; got " + ", ".join(fmt_shape(t.shape) for t in in_types))
        total = None if total is None or t.shape[axis] is None else total + t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return TensorType(tuple(shape), first.dtype)


def _concat_vjp(b, nid, dy):
    xs = b.operands(nid)
    rank = len(b.shape(dy))
    axis = b.attrs(nid)["axis"] % rank
    grads, start = [], 0
    for x in xs:
        n = b.shape(x)[axis]
        begin = [0] * rank
        size = [-1] * rank
        begin[axis], size[axis] = start, n
        grads.append(b.op("slice", dy, begin=tuple(begin), size=tuple(size)))
        start += n
    return grads


register("concatenate", shape=_concat_rule, vjp=_concat_vjp, kind="injective")


def _slice_rule(in_types, attrs):
    t = in_types[0]
    begin, size = attrs["begin"], attrs["size"]
    if len(begin) != t.rank or len(size) != t.rank:
        raise ShapeError(f"slice: begin/size must have {t.rank} entries for {fmt_shape(t.shape)}")
    out = []
    for d, s, n in zip(t.shape, begin, size):
        end = None if (d is None and n == -1) else (d if n == -1 else s + n)
        if s < 0 or (d is not None and end is not None and end > d):
            raise ShapeError(f"slice: begin {tuple(begin)} size {tuple(size)} is out of bounds for {fmt_shape(t.shape)}")
        out.append(None if end is None else end - s)
    return TensorType(tuple(out), t.dtype)


def _slice_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    xs, ys = b.shape(x), b.shape(nid)
    begin = b.attrs(nid)["begin"]
    pads = tuple((s, d - s - n) for s, d, n in zip(begin, xs, ys))
    return [b.op("pad", dy, pads=pads, value=0.0)]


register("slice", shape=_slice_rule, vjp=_slice_vjp, kind="injective",
         doc="x[begin : begin+size] per axis (size -1 = to the end)")


def _pad_rule(in_types, attrs):
    t = in_types[0]
    pads = attrs["pads"]
    if len(pads) != t.rank:
        raise ShapeError(f"pad: {len(pads)} (before, after) pairs for a tensor of rank {t.rank}")
    return TensorType(tuple(None if d is None else d + lo + hi for d, (lo, hi) in zip(t.shape, pads)), t.dtype)


def _pad_vjp(b, nid, dy):
    pads = b.attrs(nid)["pads"]
    (x,) = b.operands(nid)
    return [b.op("slice", dy, begin=tuple(lo for lo, _ in pads), size=tuple(b.shape(x)))]


register("pad", shape=_pad_rule, vjp=_pad_vjp, kind="injective", doc="constant padding")


def _fill_rule(in_types, attrs):
    return TensorType(tuple(attrs["shape"]), attrs.get("dtype", "float32"))


register("fill", shape=_fill_rule, kind="parameter", doc="a tensor of attrs.shape filled with attrs.value")
