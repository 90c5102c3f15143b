"""Simplification before fusion: drop identity casts and every node that no output or
state update depends on (the loss's unused intermediates, gradients nobody applies), except
inputs and a data-parallel step's all-reduce."""
import networkx as nx

from ..ir.graph import operands, topo_order


def _redirect(g, old, new):
    for _, v, key in list(g.out_edges(old, keys=True)):
        g.remove_edge(old, v, key)
        g.add_edge(new, v, key=key)
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]
    g.graph["updates"] = {var: (new if val == old else val) for var, val in g.graph["updates"].items()}


def simplify(g):
    g = g.copy()
    g.graph["updates"] = dict(g.graph["updates"])
    for nid in topo_order(g):
        node = g.nodes[nid]
        if node["op"] == "cast" and node["type"].dtype == g.nodes[operands(g, nid)[0]]["type"].dtype:
            _redirect(g, nid, operands(g, nid)[0])
    live = set(g.graph["outputs"]) | set(g.graph["updates"].values()) | set(g.graph["updates"])
    for root in list(live):
        live |= nx.ancestors(g, root)
    # inputs stay: the runtime feeds them by name; so does a data-parallel step's all-reduce, which
    # carries the runtime's sums even when no value reads its outputs (ops/collective.py)
    keep_inputs = set(g.graph["inputs"]) | {n for n in g.nodes if g.nodes[n]["op"] == "all_reduce"}
    g.remove_nodes_from([n for n in list(g.nodes) if n not in live and n not in keep_inputs])
    return g
