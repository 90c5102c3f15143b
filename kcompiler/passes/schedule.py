"""Scheduling: planned graph -> scheduled graph. Every node whose op has a kernel description
(``Op.describe``, built in kcompiler/schedule/) gets it as ``node['kernel']``: the
target-neutral loop nests a backend renders. Nodes without one (the contraction templates)
are left to the backend's own lowering. The kernels run in the plan's order."""
from ..ir.graph import copy_graph, inline_constants, operands
from ..ir.registry import get_op


def kernel_name(g, nid):
    return f"k{nid}_{g.nodes[nid]['op']}"


def schedule_kernels(g):
    g = copy_graph(g)
    for nid in g.graph["plan"]["order"]:
        node = g.nodes[nid]
        op = get_op(node["op"])
        if op.describe is not None:
            in_types = [g.nodes[u]["type"] for u in operands(g, nid)]
            args = (node, in_types, kernel_name(g, nid))
            kernel = op.describe(*args, inline_constants(g, nid)) if op.describe_constants else op.describe(*args)
            kernel.nodes = [nid]
            node["kernel"] = kernel
    return g
