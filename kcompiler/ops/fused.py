"""The `fused` op: a group of element-wise ops collapsed into one node by the fusion pass.

attrs.body is a list of member ops in evaluation order, each
``{"op": name, "attrs": {...}, "args": [ref, ...]}`` where a ref is ``["in", k]``
(operand k of the fused node) or ``["m", j]`` (member j). attrs.outputs lists the
members whose values leave the node (several -> the node has a tuple type).
Members keep their own shape rules; the fused node's type is theirs.

The `fused_updates` op: independent element-wise nodes, each computing only state updates (an
optimizer's step of a variable), merged into one node by passes/fusion.py (``fuse_updates``):
one kernel runs them all. attrs.members lists them, each ``{"body", "outputs", "n_in"}`` (a
`fused` node's attrs and its operand count); its operands are the members' operands one
member after another, its results the members' results likewise (always a tuple).
"""
from ..ir.registry import get_op, register
from ..ir.types import TensorType


def member_types(in_types, attrs, acc=None):
    """Each member's type; ``acc`` is the type an ``["acc", 0]`` ref stands for (fused_contraction)."""
    types = []
    for m in attrs["body"]:
        args = [acc if kind == "acc" else in_types[i] if kind == "in" else types[i] for kind, i in m["args"]]
        types.append(get_op(m["op"]).shape_rule(args, m["attrs"]) if m["op"] != "constant"
                     else TensorType((), m["attrs"]["dtype"]))
    return types


def _fused_rule(in_types, attrs):
    types = member_types(in_types, attrs)
    outs = [types[j] for j in attrs["outputs"]]
    return outs[0] if len(outs) == 1 else tuple(outs)


register("fused", shape=_fused_rule, kind="elementwise",
         doc="element-wise ops evaluated in one pass (see attrs.body); made by passes/fusion.py")


def update_members(members):
    """[(member, its operands' slice, its results' slice)] of a `fused_updates` node's
    attrs.members: each member's operands and results follow the previous member's."""
    out, first_in, first_out = [], 0, 0
    for m in members:
        out.append((m, slice(first_in, first_in + m["n_in"]), slice(first_out, first_out + len(m["outputs"]))))
        first_in += m["n_in"]
        first_out += len(m["outputs"])
    return out


def _updates_rule(in_types, attrs):
    types = []
    for m, operands, _ in update_members(attrs["members"]):
        t = _fused_rule(in_types[operands], m)
        types += list(t) if isinstance(t, tuple) else [t]
    return tuple(types)


register("fused_updates", shape=_updates_rule, kind="opaque",
         doc="independent element-wise state updates in one kernel (see attrs.members); made by passes/fusion.py")
