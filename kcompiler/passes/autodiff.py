"""Reverse-mode autodiff in the IR.

From a scalar (or seeded) output and a list of nodes to differentiate with respect
to, walk the graph backwards and emit each op's VJP rule as ordinary IR nodes, so
the backward pass is a graph like any other: shape-checked, fusable, lowerable.
Cotangents of a node used several times are summed; multi-output ops (recurrent
loops) receive one cotangent per output (zeros where an output is unused).
"""
import networkx as nx

from ..ir.graph import GraphBuilder, topo_order
from ..ir.registry import get_op


def _zeros_like(b, t):
    return b.add("fill", (), {"shape": tuple(t.shape), "value": 0.0, "dtype": t.dtype})


def _accumulate(b, table, nid, g):
    table[nid] = g if nid not in table else b.op("add", table[nid], g)


def gradients(b: GraphBuilder, y, xs, dy=None):
    """Emit the gradient of node ``y`` w.r.t. each node in ``xs`` (None where y does not
    depend on it). ``dy`` seeds the cotangent of y (default: ones, y scalar)."""
    g = b.g
    targets = set(xs)
    upstream = nx.ancestors(g, y) | {y}
    downstream = set()
    for x in xs:
        downstream |= nx.descendants(g, x) | {x}
    relevant = upstream & downstream
    if dy is None:
        t = b.type(y)
        dy = b.add("fill", (), {"shape": tuple(t.shape), "value": 1.0, "dtype": t.dtype})
    cot = {y: dy}
    tuple_cot = {}  # multi-output node -> {index: cotangent}
    for nid in reversed([n for n in topo_order(g) if n in relevant]):
        node = g.nodes[nid]
        if isinstance(node["type"], tuple):
            items = tuple_cot.get(nid)
            if not items:
                continue
            incoming = [items.get(i) or _zeros_like(b, t) for i, t in enumerate(node["type"])]
        elif nid in cot:
            incoming = cot[nid]
        else:
            continue
        if nid in targets and node["op"] in ("variable", "input", "constant"):
            continue
        if node["op"] == "tuple_item":
            (parent,) = b.operands(nid)
            slot = tuple_cot.setdefault(parent, {})
            i = node["attrs"]["index"]
            slot[i] = incoming if i not in slot else b.op("add", slot[i], incoming)
            continue
        op = get_op(node["op"])
        if op.vjp_rule is None:
            if node["op"] in ("variable", "input", "constant", "fill"):
                continue
            raise NotImplementedError(f"op {node['op']!r} (from {node.get('layer')}) has no gradient rule")
        prev_layer, b.layer = b.layer, node.get("layer")
        try:
            grads = op.vjp_rule(b, nid, incoming)
        finally:
            b.layer = prev_layer
        for u, gu in zip(b.operands(nid), grads):
            if gu is not None and u in relevant:
                _accumulate(b, cot, u, gu)
    return [cot.get(x) for x in xs]
