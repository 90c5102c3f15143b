"""The reference interpreter: runs an IR graph node by node with each op's numpy reference.

It is the oracle that generated kernels are tested against, and what
``run_eagerly=True`` uses for debugging. It is never the engine of compiled programs.
"""
import numpy as np

from ..errors import IndexRangeError, ShapeError
from ..ir.types import fmt_shape
from .graph import operands, topo_order
from .registry import get_op


def _check_feed(node, value):
    t = node["type"]
    if value.dtype != np.dtype(t.dtype):
        raise ShapeError(f"input {node['attrs']['name']!r}: expected dtype {t.dtype}, got {value.dtype}")
    if len(value.shape) != t.rank or any(d is not None and d != v for d, v in zip(t.shape, value.shape)):
        raise ShapeError(f"input {node['attrs']['name']!r}: expected shape {fmt_shape(t.shape)}, "
                         f"got {fmt_shape(value.shape)}")


def run_reference(g, feeds, keep_all=False):
    """Run graph ``g``. ``feeds`` maps input names to arrays. Returns (outputs, updates):
    the graph's outputs in order, and {variable node id: new value} for state updates.
    With keep_all, also returns every node's value (for tests and debugging)."""
    values = {}
    for nid in topo_order(g):
        node = g.nodes[nid]
        op, attrs = node["op"], node["attrs"]
        if op == "input":
            name = attrs["name"]
            if name not in feeds:
                raise KeyError(f"no value fed for graph input {name!r}")
            value = np.asarray(feeds[name])
            _check_feed(node, value)
        elif op == "variable":
            value = g.graph["variables"][nid].numpy()
        elif op == "constant":
            value = (g.graph["constants"][nid] if attrs.get("array")
                     else np.asarray(attrs["value"], dtype=node["type"].dtype))
        elif op == "tuple_item":
            value = values[operands(g, nid)[0]][attrs["index"]]
        elif op == "fill":
            value = np.full(node["type"].shape, attrs["value"], dtype=node["type"].dtype)
        else:
            reference = get_op(op).reference
            if reference is None:
                raise NotImplementedError(f"op {op!r} has no numpy reference")
            try:
                value = reference(*(values[u] for u in operands(g, nid)), **attrs)
            except ShapeError as e:
                where = f"{node['layer']}: " if node.get("layer") else ""
                raise ShapeError(f"{where}{e}") from None
            except IndexRangeError as e:  # the message the generated code's error gives
                raise IndexRangeError(get_op(op).index_error(g, nid, e.value), e.value) from None
        values[nid] = value
    outputs = [values[o] for o in g.graph["outputs"]]
    updates = {v: values[u] for v, u in g.graph["updates"].items()}
    return (outputs, updates, values) if keep_all else (outputs, updates)


class ReferenceProgram:
    """A static graph run by the numpy reference interpreter behind CompiledGraph's interface:
    what a model compiled with run_eagerly=True trains and predicts with (for debugging)."""

    def __init__(self, g):
        self.graph = g
        self.kernels = []
        self.inputs = {g.nodes[n]["attrs"]["name"]: None for n in g.graph["inputs"]}
        self.output_names = g.graph.get("output_names", [f"output_{i}" for i in range(len(g.graph["outputs"]))])

    def run(self, feeds, scalars=False):
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        outputs, updates = run_reference(self.graph, feeds)
        for vnode, value in updates.items():
            self.graph.graph["variables"][vnode].assign(value)
        if scalars:
            # as codegen.backend.step_logs (ir/ does not import the backends)
            return {name: float(v) if np.ndim(v) == 0 else np.array(v)
                    for name, v in zip(self.output_names, outputs)}
        return outputs
