"""Simplification before fusion: drop identity casts and pairs of transposes that undo each other
(the layout transposes between two channels_first layers, forward and backward), and every node
that no output or state update depends on (the loss's unused intermediates, gradients nobody
applies), except inputs and a data-parallel step's all-reduce. A lone identity transpose stays:
it is a plain copy, which the kernel tests use."""

from ..ir.graph import copy_graph, operands, redirect_uses, topo_order


def _undone_transpose_source(g, nid):
    """For transpose(transpose(x, p), q) with p∘q the identity: the node x that it equals; else None."""
    inner = operands(g, nid)[0]
    if g.nodes[inner]["op"] != "transpose":
        return None
    perm, inner_perm = g.nodes[nid]["attrs"]["perm"], g.nodes[inner]["attrs"]["perm"]
    if [inner_perm[axis] for axis in perm] == list(range(len(perm))):
        return operands(g, inner)[0]
    return None


def simplify(g):
    g = copy_graph(g)
    g.graph["updates"] = dict(g.graph["updates"])
    for nid in topo_order(g):
        node = g.nodes[nid]
        if node["op"] == "cast" and node["type"].dtype == g.nodes[operands(g, nid)[0]]["type"].dtype:
            redirect_uses(g, nid, operands(g, nid)[0])
        elif node["op"] == "transpose":
            source = _undone_transpose_source(g, nid)
            if source is not None:
                redirect_uses(g, nid, source)
    # one walk back from all the roots together: an ancestor set per root made the pass quadratic
    # in the model's depth (495 walks of the whole graph at 40 convolutions)
    live = set(g.graph["outputs"]) | set(g.graph["updates"].values()) | set(g.graph["updates"])
    pending = list(live)
    while pending:
        for u in g.predecessors(pending.pop()):
            if u not in live:
                live.add(u)
                pending.append(u)
    # inputs stay: the runtime feeds them by name; so does a data-parallel step's all-reduce, which
    # carries the runtime's sums even when no value reads its outputs (ops/collective.py)
    keep_inputs = set(g.graph["inputs"]) | {n for n in g.nodes if g.nodes[n]["op"] == "all_reduce"}
    g.remove_nodes_from([n for n in list(g.nodes) if n not in live and n not in keep_inputs])
    return g
