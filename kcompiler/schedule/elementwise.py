"""Kernel descriptions of the element-wise nodes: single ops, ``fused`` groups, and the
``fused_updates`` kernel that runs several independent ones (state updates) as one.

One loop nest over the output's elements, every output written at the same flat index.
Operands broadcast through their strides (0 along broadcast axes); adjacent dimensions that
every operand walks contiguously are merged first, so the innermost loop is as long as it
can be and contiguous (what a CPU backend vectorises, what a GPU backend spreads over
threads). All loops are parallel: no element depends on another. Scalar constants known at
compile time are inlined. Each member of a fused body is a scalar expression over its
operands (schedule/scalar.py expands the registry ops); a member that several others read
is computed once into a local.

``member_values`` is the one walker of the fused body format (attrs ``body`` / ``outputs``,
refs ``["in", k]``, ``["m", j]``, ``["acc", 0]``): the fused-contraction epilogues of the
backends evaluate their bodies through it too.
"""
from ..ir.registry import all_ops, description
from ..ir.types import num_elements
from ..ops.fused import member_types, update_members
from .scalar import COUNTER_OPS
from .kernel import (INDEX, Call, Const, Kernel, Load, Local, Store, Var, broadcast_strides, collapse_loops,
                     contiguous_strides, linear_index, loop, node_buffers)


def body_of(node, n_inputs):
    """The member list and output members of an element-wise node: a fused node's body, or
    the op itself over its operands."""
    if node["op"] == "fused":
        return node["attrs"]["body"], node["attrs"]["outputs"]
    return [{"op": node["op"], "attrs": node["attrs"], "args": [["in", i] for i in range(n_inputs)]}], [0]


def member_values(body, types, operand, acc=None, index=None, bind=None):
    """The value of each member of fused ``body`` as an expression: ``types`` are the members'
    types (ops.fused.member_types), ``operand(k)`` the expression of ref ``["in", k]``, ``acc``
    that of ``["acc", 0]``, ``index`` the element's flat index (the counter of the random
    ops' generator). ``bind(j, expr)`` gives what later members read as member j: the expression
    itself (the default), or a variable the caller has bound to its value."""
    values = []
    for j, m in enumerate(body):
        if m["op"] == "constant":
            value = Const(m["attrs"]["value"], m["attrs"]["dtype"])
        else:
            args = [acc if kind == "acc" else operand(i) if kind == "in" else values[i] for kind, i in m["args"]]
            if m["op"] in COUNTER_OPS:
                args.append(index)
            value = Call(m["op"], tuple(args), tuple(sorted(m["attrs"].items())), types[j].dtype)
        values.append(bind(j, value) if bind is not None else value)
    return values


def _use_counts(body, outputs):
    uses = [0] * len(body)
    for m in body:
        for kind, i in m["args"]:
            if kind == "m":
                uses[i] += 1
    for j in outputs:
        uses[j] += 1
    return uses


def element_statements(body, outputs, in_types, constants, in_place, flat, operand_index, in_name, out_name,
                       prefix=""):
    """The statements computing element ``flat`` of element-wise ``body``: operand i is read at
    ``operand_index(i)`` of buffer ``in_name(i)`` (or inlined: ``constants``), output k stored at
    ``flat`` in ``out_name(k)``. An output computed in place (``in_place``: output -> operand,
    passes/memory_plan.py, a state update in its variable's buffer) is stored in that operand's
    buffer, whose element is read into a local before any store. Locals are named after
    ``prefix``."""
    statements = [Local(Var(f"{prefix}old{i}", in_types[i].dtype), Load(in_name(i), flat, in_types[i].dtype))
                  for i in sorted(set(in_place.values()))]
    read_first = {i: Var(f"{prefix}old{i}", in_types[i].dtype) for i in in_place.values()}

    def operand(i):
        if i in constants:
            return Const(constants[i], in_types[i].dtype)
        if i in read_first:
            return read_first[i]
        return Load(in_name(i), operand_index(i), in_types[i].dtype)

    uses = _use_counts(body, outputs)

    def bind(j, value):
        if uses[j] < 2 or isinstance(value, (Const, Load)):
            return value
        local = Var(f"{prefix}m{j}", value.dtype)
        statements.append(Local(local, value))
        return local

    values = member_values(body, member_types(in_types, {"body": body}), operand, index=flat, bind=bind)
    statements += [Store(in_name(in_place[k]) if k in in_place else out_name(k), flat, values[j])
                   for k, j in enumerate(outputs)]
    return statements


def describe_elementwise(node, in_types, name, constants):
    out_types = list(node["type"]) if isinstance(node["type"], tuple) else [node["type"]]
    out_shape = out_types[0].shape
    body, outputs = body_of(node, len(in_types))
    dims, (out_strides, *strides) = collapse_loops(
        list(out_shape), contiguous_strides(out_shape), *[broadcast_strides(t.shape, out_shape) for t in in_types])
    indices = [Var(f"d{k}") for k in range(len(dims))]
    statements = element_statements(body, outputs, in_types, constants, node["attrs"].get("in_place", {}),
                                    linear_index(indices, out_strides), lambda i: linear_index(indices, strides[i]),
                                    lambda i: f"in{i}", lambda k: f"out{k}")
    for k in reversed(range(len(dims))):
        statements = [loop(indices[k].name, dims[k], statements, parallel=True)]
    return Kernel(name, node_buffers(node, in_types), tuple(statements))


# The chunks a `fused_updates` kernel's parallel loop runs (each takes its share of every
# member): as many parts as the cores split it into, at most this many.
UPDATE_CHUNKS = 16


def describe_fused_updates(node, in_types, name, constants):
    """A `fused_updates` node (ops/fused.py: independent element-wise state updates, made by
    passes/fusion.py): one loop over UPDATE_CHUNKS chunks, parallel, in which each chunk runs its
    contiguous share of every member (each member's body as ``describe_elementwise`` computes it;
    its operands have its output's elements in the same order, or one element); then, serially,
    the elements of each member that the chunks leave over (fewer than UPDATE_CHUNKS each)."""
    chunk = Var("c")
    chunked, remainders = [], []
    for j, (member, ins, outs) in enumerate(update_members(node["attrs"]["members"])):
        types = in_types[ins]
        size = num_elements(node["type"][outs.start].shape)
        element = _member_element(node, member, types, size, ins.start, outs.start, constants, f"u{j}_")
        share = size // UPDATE_CHUNKS
        if share:
            i = Var(f"i{j}")
            chunked.append(loop(i.name, share, element(linear_index([chunk, i], [share, 1]))))
        if size > share * UPDATE_CHUNKS:
            r = Var(f"r{j}")
            remainders.append(loop(r.name, size - share * UPDATE_CHUNKS,
                                   element(linear_index([r], [1], offset=share * UPDATE_CHUNKS))))
    body = ([loop(chunk.name, UPDATE_CHUNKS, chunked, parallel=True)] if chunked else []) + remainders
    return Kernel(name, node_buffers(node, in_types), tuple(body))


def _member_element(node, member, types, size, first_in, first_out, constants, prefix):
    """``element(flat)``: the statements of one member of `fused_updates` ``node`` at its element
    ``flat``, its operands and outputs numbered from ``first_in`` and ``first_out``."""
    n_in, n_out = len(types), len(member["outputs"])
    own_constants = {i - first_in: c for i, c in constants.items() if first_in <= i < first_in + n_in}
    own_in_place = {k - first_out: i - first_in for k, i in node["attrs"].get("in_place", {}).items()
                    if first_out <= k < first_out + n_out}
    if any(not 0 <= i < n_in for i in own_in_place.values()):  # passes/fusion.py's fuse_updates prevents it
        raise ValueError(f"{prefix}: a result computed in the buffer of another member's operand")

    def element(flat):
        return element_statements(member["body"], member["outputs"], types, own_constants, own_in_place, flat,
                                  lambda i: flat if num_elements(types[i].shape) == size else Const(0, INDEX),
                                  lambda i: f"in{first_in + i}", lambda k: f"out{first_out + k}", prefix)
    return element


for _name, _op in all_ops().items():
    if _op.kind == "elementwise":
        description(_name, constants=True)(describe_elementwise)
description("fused_updates", constants=True)(describe_fused_updates)
