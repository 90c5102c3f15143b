"""Kernel descriptions of the data-movement and indexing ops: transpose, broadcast_to, slice,
pad, concatenate (copies), gather, scatter_add and check_index (indexed by data).

Every copy is a strided copy ``out[o0 + sum(i_k * os_k)] = in[i0 + sum(i_k * is_k)]`` whose
dimensions are collapsed first (size-1 axes dropped, neighbours that both sides walk
contiguously merged), so the innermost loop is the longest contiguous run there is and the
nest is as shallow as it can be. Pad and concatenate write whole contiguous runs per outer
index (pad: fill, copy, fill; concatenate: one run per operand), so each output row is
written once, front to back. All their loops are independent (``parallel``).

``gather`` and ``check_index`` are fallible: an index outside its range reports
``STATUS_INDEX_OUT_OF_RANGE`` with the index (``Fail``; the first one wins) and is never used
to address memory (gather writes a zero row instead). ``scatter_add`` accumulates rows with
``AtomicAdd``: its loop over indices is parallel only because repeated indices meet in an
atomic add (a serial backend adds in index order, as the reference does).
"""
from ..ir.registry import description
from ..ir.types import num_elements
from .kernel import (STATUS_INDEX_OUT_OF_RANGE, AtomicAdd, Const, Fail, If, Kernel, Load, Store, Var, call,
                     collapse_loops, contiguous_strides, linear_index, loop, node_buffers)


def _nest(dims, body_at, prefix="i"):
    """Nested parallel loops over ``dims`` (outermost first) around ``body_at(index vars)``."""
    idx = [Var(f"{prefix}{k}") for k in range(len(dims))]
    body = list(body_at(idx))
    for k in reversed(range(len(dims))):
        body = [loop(idx[k].name, dims[k], body, parallel=True)]
    return body


def _copy(dtype, dims, out_strides, src_strides, src_offset=0):
    """out0[sum(i_k * out_strides[k])] = in0[src_offset + sum(i_k * src_strides[k])] over ``dims``."""
    dims, (out_strides, src_strides) = collapse_loops(list(dims), list(out_strides), list(src_strides))
    return _nest(dims, lambda idx: [Store("out0", linear_index(idx, out_strides),
                                          Load("in0", linear_index(idx, src_strides, src_offset), dtype))])


def _plus(e, k):
    return e if k == 0 else e + k


def _run(out, start, n, value_at, name):
    """out[start + c] = value_at(c) for c in [0, n): one contiguous run (nothing if n == 0)."""
    if n == 0:
        return []
    c = Var(name)
    return [loop(name, n, [Store(out, c if isinstance(start, int) and start == 0 else start + c, value_at(c))],
                 parallel=True)]


def _scalar(value, dtype):
    return Const(float(value) if dtype.startswith("float") else int(value), dtype)


def _kernel(name, node, in_types, body):
    return Kernel(name, node_buffers(node, in_types), tuple(body))


@description("transpose")
def describe_transpose(node, in_types, name):
    x = in_types[0]
    in_strides = contiguous_strides(x.shape)
    out_shape = node["type"].shape
    body = _copy(x.dtype, out_shape, contiguous_strides(out_shape), [in_strides[p] for p in node["attrs"]["perm"]])
    return _kernel(name, node, in_types, body)


@description("broadcast_to")
def describe_broadcast_to(node, in_types, name):
    x = in_types[0]
    out_shape = node["type"].shape
    lead = len(out_shape) - len(x.shape)
    own = contiguous_strides(x.shape)
    # a broadcast axis reads the same element again: stride 0
    src_strides = [0] * lead + [0 if d == 1 else s for d, s in zip(x.shape, own)]
    return _kernel(name, node, in_types, _copy(x.dtype, out_shape, contiguous_strides(out_shape), src_strides))


@description("slice")
def describe_slice(node, in_types, name):
    x = in_types[0]
    in_strides = contiguous_strides(x.shape)
    out_shape = node["type"].shape
    offset = sum(b * s for b, s in zip(node["attrs"]["begin"], in_strides))
    body = _copy(x.dtype, out_shape, contiguous_strides(out_shape), in_strides, src_offset=offset)
    return _kernel(name, node, in_types, body)


@description("pad")
def describe_pad(node, in_types, name):
    """Per index of the axes before the innermost padded axis p: outside the input, fill the
    whole row (p and the axes after it, contiguous); inside, fill the low padding, copy the
    input's row, fill the high padding."""
    x = in_types[0]
    out_shape, pads = node["type"].shape, node["attrs"]["pads"]
    fill = _scalar(node["attrs"].get("value", 0.0), x.dtype)
    padded = [a for a, (lo, hi) in enumerate(pads) if lo or hi]
    if not padded:
        return _kernel(name, node, in_types, _copy(x.dtype, out_shape, contiguous_strides(out_shape), contiguous_strides(x.shape)))
    p = padded[-1]
    run = num_elements(out_shape[p + 1:])        # the same in input and output: no padding after p
    out_strides, in_strides = contiguous_strides(out_shape), contiguous_strides(x.shape)
    lo, n, hi = pads[p][0] * run, x.shape[p] * run, pads[p][1] * run

    def row(idx):
        out_base = linear_index(idx, out_strides)
        in_base = linear_index(idx, in_strides, -sum(pads[a][0] * in_strides[a] for a in range(p)))
        inside = (_run("out0", out_base, lo, lambda c: fill, "lo")
                  + _run("out0", _plus(out_base, lo), n, lambda c: Load("in0", in_base + c, x.dtype), "c")
                  + _run("out0", _plus(out_base, lo + n), hi, lambda c: fill, "hi"))
        conds = [call("and", call("ge", idx[a], pads[a][0]), call("lt", idx[a], pads[a][0] + x.shape[a]))
                 for a in padded[:-1]]
        if not conds:
            return inside
        cond = conds[0]
        for c in conds[1:]:
            cond = call("and", cond, c)
        return [If(cond, tuple(inside), tuple(_run("out0", out_base, lo + n + hi, lambda c: fill, "row")))]

    return _kernel(name, node, in_types, _nest(list(out_shape[:p]), row, prefix="o"))


@description("concatenate")
def describe_concatenate(node, in_types, name):
    """Per index of the axes before the concatenation axis, each operand's contiguous run in turn."""
    out_shape = node["type"].shape
    axis = node["attrs"]["axis"] % len(out_shape)
    outer, inner = num_elements(out_shape[:axis]), num_elements(out_shape[axis + 1:])
    dtype = node["type"].dtype
    o = Var("o")
    out_base = o * (out_shape[axis] * inner) if outer > 1 else Const(0, "int64")
    runs, start = [], 0
    for k, t in enumerate(in_types):
        n = t.shape[axis] * inner
        in_base = o * n if outer > 1 else Const(0, "int64")
        runs += _run("out0", _plus(out_base, start), n,
                     lambda c, src=f"in{k}", in_base=in_base: Load(src, in_base + c, dtype), f"c{k}")
        start += n
    body = [loop("o", outer, runs, parallel=True)] if outer > 1 else runs
    return _kernel(name, node, in_types, body)


def _in_range(index, limit):
    return call("and", call("ge", index, 0), call("lt", index, limit))


@description("gather")
def describe_gather(node, in_types, name):
    """out[i, :] = table[idx[i], :]; an index outside the table fails and gets a zero row."""
    table, ids = in_types
    rows, width = table.shape
    i = Var("i")
    row = call("cast", Load("in1", i, ids.dtype), dtype="int64")
    copy = _run("out0", i * width, width, lambda c: Load("in0", row * width + c, table.dtype), "c")
    zero = _run("out0", i * width, width, lambda c: _scalar(0, table.dtype), "c")
    fetch = If(_in_range(row, rows), tuple(copy), (Fail(STATUS_INDEX_OUT_OF_RANGE, row),) + tuple(zero))
    body = [loop("i", num_elements(ids.shape), [fetch], parallel=True)]
    return _kernel(name, node, in_types, body)


@description("scatter_add")
def describe_scatter_add(node, in_types, name):
    """out = zeros((rows, D)); out[idx[i], :] += upd[i, :] (indices outside [0, rows) are
    skipped: only gather's gradient makes this op, and gather fails on them first)."""
    ids, upd = in_types
    rows, width = node["type"].shape
    i, c = Var("i"), Var("c")
    row = call("cast", Load("in0", i, ids.dtype), dtype="int64")
    zero = _run("out0", 0, rows * width, lambda z: _scalar(0, upd.dtype), "z")
    add = loop("c", width, [AtomicAdd("out0", row * width + c, Load("in1", i * width + c, upd.dtype))], parallel=True)
    scatter = loop("i", num_elements(ids.shape), [If(_in_range(row, rows), (add,))], parallel=True)
    return _kernel(name, node, in_types, zero + [scatter])


@description("check_index")
def describe_check_index(node, in_types, name):
    """out = x; a value outside [0, limit) fails with that value."""
    (x,) = in_types
    i = Var("i")
    value = Load("in0", i, x.dtype)
    outside = call("not", _in_range(value, node["attrs"]["limit"]))
    check = [Store("out0", i, value), If(outside, (Fail(STATUS_INDEX_OUT_OF_RANGE, value),))]
    return _kernel(name, node, in_types, [loop("i", num_elements(x.shape), check, parallel=True)])
