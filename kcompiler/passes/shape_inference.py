"""Shape inference: specialise the traced graph's symbolic dimensions and re-check every node.

Tracing already typed each node with symbolic dimensions (None for batch and time).
This pass takes concrete types for the graph inputs (a batch size, a sequence
length), re-runs every op's shape rule in topological order on a copy, and returns
the specialised graph. A mismatch raises ShapeError naming the layer the node came from.
"""
from ..errors import ShapeError
from ..ir.graph import copy_graph, infer_type, set_type, topo_order
from ..ir.types import TensorType, fmt_shape


def specialize_input_type(t, batch_size=None, dims=None):
    """Fill the symbolic dimensions of input type ``t``: dim 0 from batch_size, others from dims."""
    shape = list(t.shape)
    if shape and shape[0] is None and batch_size is not None:
        shape[0] = batch_size
    for i, d in (dims or {}).items():
        if shape[i] is None:
            shape[i] = d
    return TensorType(tuple(shape), t.dtype)


def infer_shapes(g, input_types=None, batch_size=None):
    """Return a copy of ``g`` with input types replaced by ``input_types`` (name -> TensorType)
    and every node re-typed. A ``fill`` made while tracing (an RNN's zero initial state)
    has None only for the batch dimension: it takes ``batch_size``."""
    g = copy_graph(g)
    input_types = input_types or {}
    for nid in topo_order(g):
        node = g.nodes[nid]
        if node["op"] == "input":
            name = node["attrs"]["name"]
            if name in input_types:
                new, old = input_types[name], node["type"]
                if new.rank != old.rank or any(o is not None and o != n for o, n in zip(old.shape, new.shape)):
                    raise ShapeError(f"input {name!r}: expected shape {fmt_shape(old.shape)}, "
                                     f"got {fmt_shape(new.shape)}")
                set_type(g, nid, new)
        elif node["op"] == "fill" and None in node["attrs"]["shape"] and batch_size is not None:
            shape = tuple(batch_size if d is None else d for d in node["attrs"]["shape"])
            node["attrs"] = dict(node["attrs"], shape=shape)
            set_type(g, nid, TensorType(shape, node["type"].dtype))
        elif node["op"] in ("variable", "constant", "fill"):
            continue
        else:
            set_type(g, nid, infer_type(g, nid))
    return g
