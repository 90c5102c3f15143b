"""Kernel descriptions of the reductions: sum, mean, max and min over any axes, argmax and
argmin along one axis, and the softmax family along one axis (softmax, log_softmax and their
gradients).

Reductions over axes first group the input's axes: size-1 axes are dropped and neighbours of
one kind (kept or reduced) merged, since both sides walk them contiguously. Then one of two
loop orders:

- the innermost axis is reduced (``sum(x, -1)``, a full reduction): per output element (the
  kept loops are parallel) a Local accumulator walks the reduced axes and one Store writes it;
- the innermost axis is kept (bias gradients ``sum(dy, 0)``, ``sum(dy, (0, 1, 2))`` over NHWC,
  ``max`` over time): that contiguous output row is the accumulator. It is filled with the
  identity, then every reduced position combines one contiguous input row into it, the row
  loop innermost. That loop vectorises without reassociating a float sum, which a scalar
  accumulator walking a strided axis cannot.

Either way every output element combines its inputs in row-major order of the reduced axes,
starting from the identity (0, -inf, +inf), as the kernels did before descriptions, so the
results are the same bit for bit. ``max``/``min`` propagate NaN (the primitives are numpy's
maximum/minimum); mean multiplies the sum by 1/count (integers: divides, truncating as
``np.mean(...).astype(int)`` does).

argmax/argmin: per position of the other axes (parallel), Locals hold the best value and its
index; a candidate wins when it compares better or is a NaN while the best is not: the first
NaN's index, as np.argmax/argmin give.

The softmax family works per row along ``attrs.axis`` (parallel over the other axes): softmax
takes the row maximum, writes exp(x - max), sums that and scales it by 1/sum (the maximum and
the sums reductions in any order, kernel.reduction: vectors, not one chain); log_softmax
does the same up to the sum, then overwrites the row with x - (max + log(sum)) (through the
output row, the exp loop vectorises: 2.3x faster than summing exp in one loop). The gradients
take one dot product or sum per row.
"""
import numpy as np

from ..errors import UnsupportedError
from ..ir.registry import description
from ..ir.types import num_elements
from ..ops.common import normalize_axes
from .kernel import (Assign, Const, If, Kernel, Load, Local, Store, Var, call, contiguous_strides, linear_index,
                     loop, node_buffers, reduction)


def _nest(loops, body, parallel):
    """``body`` inside loops over (var, extent) pairs, outermost first."""
    body = list(body)
    for var, extent in reversed(loops):
        body = [loop(var.name, extent, body, parallel=parallel)]
    return body


# ---- sum, mean, max, min over axes ------------------------------------------------------------

def _identity(kind, dtype):
    if kind in ("sum", "mean"):
        return Const(0.0 if dtype.startswith("float") else 0, dtype)
    if dtype.startswith("float"):
        return Const(float("-inf") if kind == "max" else float("inf"), dtype)
    info = np.iinfo(dtype)
    return Const(int(info.min if kind == "max" else info.max), dtype)


def _combine(kind, acc, value):
    return call({"sum": "add", "mean": "add", "max": "max", "min": "min"}[kind], acc, value)


def _axis_groups(shape, axes):
    """(extent, reduced) per merged axis: size-1 axes dropped, neighbours of one kind merged."""
    groups = []
    for i, d in enumerate(shape):
        if d == 1:
            continue
        if groups and groups[-1][1] == (i in axes):
            groups[-1] = (groups[-1][0] * d, i in axes)
        else:
            groups.append((d, i in axes))
    return groups


def _describe_reduction(kind, node, in_types, name):
    x_t = in_types[0]
    dtype = x_t.dtype
    if dtype == "bool":
        raise UnsupportedError(f"{kind} of a bool tensor has no kernel (cast it to a number first)")
    axes = normalize_axes(kind, node["attrs"].get("axes"), len(x_t.shape))
    groups = _axis_groups(x_t.shape, axes)
    idx = [Var(f"i{k}") for k in range(len(groups))]
    kept = [(idx[k], d) for k, (d, reduced) in enumerate(groups) if not reduced]
    reduced = [(idx[k], d) for k, (d, r) in enumerate(groups) if r]
    x = Load("in0", linear_index(idx, contiguous_strides([d for d, _ in groups])), dtype)
    out_index = linear_index([v for v, _ in kept], contiguous_strides([d for _, d in kept]))
    count = num_elements([x_t.shape[a] for a in axes])

    def finish(total):
        if kind != "mean":
            return total
        if dtype.startswith("float"):
            return call("mul", total, Const(1.0 / count, dtype))
        return call("div", total, Const(count, dtype))

    if reduced and not groups[-1][1]:
        # the innermost axis is kept: accumulate whole contiguous output rows
        row_var, row = kept[-1]
        out = Load("out0", out_index, dtype)
        per_row = [loop(row_var.name, row, [Store("out0", out_index, _identity(kind, dtype))], parallel=True)]
        per_row += _nest(reduced, [loop(row_var.name, row, [Store("out0", out_index, _combine(kind, out, x))])],
                         parallel=False)
        if kind == "mean":
            per_row.append(loop(row_var.name, row, [Store("out0", out_index, finish(out))], parallel=True))
        body = _nest(kept[:-1], per_row, parallel=True)
    else:
        acc = Var("acc", dtype)
        per_element = [Local(acc, _identity(kind, dtype)),
                       *_nest(reduced, [Assign(acc, _combine(kind, acc, x))], parallel=False),
                       Store("out0", out_index, finish(acc))]
        body = _nest(kept, per_element, parallel=True)
    return Kernel(name, node_buffers(node, in_types), tuple(body))


for _kind in ("sum", "mean", "max", "min"):
    description(_kind)(lambda node, in_types, name, _kind=_kind: _describe_reduction(_kind, node, in_types, name))


# ---- rows along one axis: argmax, argmin, the softmax family -------------------------------------

def _rows(node, in_types, name, axis, row_body):
    """The kernel running ``row_body(at, n, row)`` in parallel loops over every row along
    ``axis``: ``at(position)`` is the flat index of the row's element at that position, ``row``
    the row's own flat index (where a reduced result goes)."""
    shape = in_types[0].shape
    axis %= len(shape)
    outer, n, inner = num_elements(shape[:axis]), shape[axis], num_elements(shape[axis + 1:])
    o, j = Var("o"), Var("j")
    row_loops = [(v, d) for v, d in ((o, outer), (j, inner)) if d > 1]
    variables = [v for v, _ in row_loops]
    base = linear_index(variables, [n * inner if v is o else 1 for v in variables])
    row = linear_index(variables, [inner if v is o else 1 for v in variables])

    def at(position):
        if isinstance(position, int) and position == 0:
            return base
        step = position * inner if inner > 1 else position
        return step if base == Const(0, "int64") else base + step
    return Kernel(name, node_buffers(node, in_types), tuple(_nest(row_loops, row_body(at, n, row), parallel=True)))


def _describe_arg_extremum(better, not_better, node, in_types, name):
    dtype = in_types[0].dtype

    def row_body(at, n, row):
        best, best_at, a = Var("best", dtype), Var("best_at"), Var("a")
        value = Load("in0", at(a + 1), dtype)
        if dtype.startswith("float"):
            # "not worse" is also true for a NaN value, so a NaN beats a number; a NaN best stays
            # (the first NaN wins, as in numpy). LLVM folds each half into one compare.
            not_worse = call("not", call(not_better, value, best))
            wins = call("and", not_worse, call("not", call("isnan", best)))
        else:
            wins = call(better, value, best)
        return [Local(best, Load("in0", at(0), dtype)), Local(best_at, Const(0, "int64")),
                loop("a", n - 1, [If(wins, (Assign(best, value), Assign(best_at, a + 1)))]),
                Store("out0", row, call("cast", best_at, dtype="int32"))]
    return _rows(node, in_types, name, node["attrs"]["axis"], row_body)


description("argmax")(lambda node, in_types, name: _describe_arg_extremum("gt", "le", node, in_types, name))
description("argmin")(lambda node, in_types, name: _describe_arg_extremum("lt", "ge", node, in_types, name))


def _softmax_family(op):
    """Register ``row_body(dtype, at, n)`` as the description of ``op``: one row along
    attrs.axis at a time, its loops over the row's positions named ``r``."""
    def register(row_body):
        def describe(node, in_types, name):
            dtype = in_types[0].dtype
            return _rows(node, in_types, name, node["attrs"].get("axis", -1),
                         lambda at, n, row: row_body(dtype, at, n))
        description(op)(describe)
        return row_body
    return register


R = Var("r")  # the position along the row, in every loop over it


def _row_max(dtype, at, n, top):
    return reduction("r", n, [(top, "max", Const(float("-inf"), dtype), lambda r: Load("in0", at(r), dtype))])


def _row_sum(dtype, at, n, total, value):
    return reduction("r", n, [(total, "add", Const(0.0, dtype), value)])


@_softmax_family("softmax")
def _softmax(dtype, at, n):
    x, y = Load("in0", at(R), dtype), Load("out0", at(R), dtype)
    top, total, scale = Var("top", dtype), Var("total", dtype), Var("scale", dtype)
    return [*_row_max(dtype, at, n, top),
            loop("r", n, [Store("out0", at(R), call("exp", call("sub", x, top)))]),
            *_row_sum(dtype, at, n, total, lambda r: Load("out0", at(r), dtype)),
            Local(scale, call("div", 1.0, total)),
            loop("r", n, [Store("out0", at(R), call("mul", y, scale))])]


@_softmax_family("log_softmax")
def _log_softmax(dtype, at, n):
    # exp(x - max) goes through the output row, as in softmax: a loop that only stores exp
    # vectorised 2.3x faster than one that also summed it in order
    x = Load("in0", at(R), dtype)
    top, total, shift = Var("top", dtype), Var("total", dtype), Var("shift", dtype)
    return [*_row_max(dtype, at, n, top),
            loop("r", n, [Store("out0", at(R), call("exp", call("sub", x, top)))]),
            *_row_sum(dtype, at, n, total, lambda r: Load("out0", at(r), dtype)),
            Local(shift, call("add", top, call("log", total))),
            loop("r", n, [Store("out0", at(R), call("sub", x, shift))])]


@_softmax_family("softmax_grad")
def _softmax_grad(dtype, at, n):
    y, dy = Load("in0", at(R), dtype), Load("in1", at(R), dtype)
    dot = Var("dot", dtype)
    return [*_row_sum(dtype, at, n, dot, lambda r: call("mul", Load("in0", at(r), dtype), Load("in1", at(r), dtype))),
            loop("r", n, [Store("out0", at(R), call("mul", y, call("sub", dy, dot)))])]


@_softmax_family("log_softmax_grad")
def _log_softmax_grad(dtype, at, n):
    y, dy = Load("in0", at(R), dtype), Load("in1", at(R), dtype)
    total = Var("total", dtype)
    return [*_row_sum(dtype, at, n, total, lambda r: Load("in1", at(r), dtype)),
            loop("r", n, [Store("out0", at(R), call("sub", dy, call("mul", call("exp", y), total)))])]
