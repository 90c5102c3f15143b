"""Kernel descriptions of the element-wise nodes: single ops and ``fused`` groups.

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
from ..ops.fused import member_types
from .scalar import COUNTER_OPS
from .kernel import (Call, Const, Kernel, Load, Local, Store, Var, broadcast_strides, collapse_loops, contiguous_strides,
                     linear_index, loop, node_buffers)


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


def describe_elementwise(node, in_types, name, constants):
    out_types = list(node["type"]) if isinstance(node["type"], tuple) else [node["type"]]
    out_shape = out_types[0].shape
    body, outputs = body_of(node, len(in_types))
    dims, (out_strides, *strides) = collapse_loops(
        list(out_shape), contiguous_strides(out_shape), *[broadcast_strides(t.shape, out_shape) for t in in_types])
    indices = [Var(f"d{k}") for k in range(len(dims))]
    flat = linear_index(indices, out_strides)

    # output -> operand it is computed in (passes/memory_plan.py, a state update in its
    # variable's buffer): that operand's element is read into a local before any store
    in_place = node["attrs"].get("in_place", {})
    statements = [Local(Var(f"old{i}", in_types[i].dtype), Load(f"in{i}", flat, in_types[i].dtype))
                  for i in sorted(set(in_place.values()))]
    read_first = {i: Var(f"old{i}", in_types[i].dtype) for i in in_place.values()}

    def operand(i):
        if i in constants:
            return Const(constants[i], in_types[i].dtype)
        if i in read_first:
            return read_first[i]
        return Load(f"in{i}", linear_index(indices, strides[i]), in_types[i].dtype)

    uses = _use_counts(body, outputs)

    def bind(j, value):
        if uses[j] < 2 or isinstance(value, (Const, Load)):
            return value
        local = Var(f"m{j}", value.dtype)
        statements.append(Local(local, value))
        return local

    values = member_values(body, member_types(in_types, {"body": body}), operand, index=flat, bind=bind)
    statements += [Store(f"in{in_place[k]}" if k in in_place else f"out{k}", flat, values[j])
                   for k, j in enumerate(outputs)]
    for k in reversed(range(len(dims))):
        statements = [loop(indices[k].name, dims[k], statements, parallel=True)]
    return Kernel(name, node_buffers(node, in_types), tuple(statements))


for _name, _op in all_ops().items():
    if _op.kind == "elementwise":
        description(_name, constants=True)(describe_elementwise)
