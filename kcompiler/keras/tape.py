"""GradientTape: gradients of eager computations, compiled.

While a tape is active, every eager call — a layer or model call (one traced graph),
a keras.ops call (a one-op graph), a loss — is recorded with the tensors that went
in and came out. ``tape.gradient(target, sources)`` splices the recorded graphs that
lead to ``target`` into one graph, runs the autodiff pass on it, compiles the result
to generated kernels (cached by the structure of what was recorded) and runs it.
"""
import numpy as np

from ..errors import KCompilerError
from ..ir.graph import GraphBuilder, operands, topo_order
from ..ir.types import TensorType
from ..runtime.specializations import EAGER_GRAPHS_PER_PROCESS, SpecializationCache
from .tensor import Tensor, to_array

_active_tapes = []
# structure signature -> gradient graph (compiled on its first run); the least recently used are dropped
_compiled_gradients = SpecializationCache(EAGER_GRAPHS_PER_PROCESS)


def record_graph(g, feeds, inputs, outputs):
    """Record an eager run of graph ``g``: ``inputs`` maps its input names to the tensors
    (or arrays) fed, ``outputs`` are the Tensors returned for g.graph['outputs']."""
    for tape in _active_tapes:
        tape._calls.append((g, dict(inputs), {k: v for k, v in feeds.items()}, list(outputs)))


class GradientTape:
    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._calls = []
        self._watched = set()
        self._used = False

    def __enter__(self):
        _active_tapes.append(self)
        return self

    def __exit__(self, *exc):
        _active_tapes.remove(self)
        return False

    def watch(self, tensor):
        for t in tensor if isinstance(tensor, (list, tuple)) else [tensor]:
            self._watched.add(id(t))

    def reset(self):
        self._calls = []

    def gradient(self, target, sources, output_gradients=None, unconnected_gradients="none"):
        from .variables import Variable
        if self._used and not self.persistent:
            raise RuntimeError("A non-persistent GradientTape can only be used to compute one set of "
                               "gradients (or jacobians)")
        self._used = True
        single = not isinstance(sources, (list, tuple))
        source_list = [sources] if single else list(sources)
        b = GraphBuilder(name="gradient")
        node_of = {}       # id(Tensor) -> node in the gradient graph
        feeds, signature = {}, []

        def external(t):
            """A tensor the recording did not produce: a graph input fed with its value."""
            key = id(t)
            if key not in node_of:
                a = t.numpy() if isinstance(t, Tensor) else to_array(t)
                name = f"ext{len(feeds)}"
                node_of[key] = b.input(name, TensorType(a.shape, str(a.dtype)))
                feeds[name] = a
                signature.append(("ext", a.shape, str(a.dtype)))
            return node_of[key]

        for s in source_list:
            if isinstance(s, Tensor) and id(s) in self._watched:
                external(s)
        for index, (g, inputs, call_feeds, outputs) in enumerate(self._calls):
            mapping = {}
            for nid in topo_order(g):
                node = g.nodes[nid]
                op = node["op"]
                if op == "input":
                    name = node["attrs"]["name"]
                    value = inputs.get(name)
                    if value is None:
                        value = call_feeds[name]
                        a = np.asarray(value)
                        feed = f"ext{len(feeds)}"
                        mapping[nid] = b.input(feed, TensorType(a.shape, str(a.dtype)))
                        feeds[feed] = a
                        signature.append(("feed", a.shape, str(a.dtype)))
                    else:
                        produced = node_of.get(id(value))
                        mapping[nid] = produced if produced is not None else external(value)
                        signature.append(("in", produced))  # which recorded value feeds it
                elif op == "variable":
                    mapping[nid] = b.variable(g.graph["variables"][nid])
                elif op == "constant" and node["attrs"].get("array"):
                    mapping[nid] = b.array_constant(g.graph["constants"][nid])
                else:
                    mapping[nid] = b.add(op, [mapping[u] for u in operands(g, nid)], node["attrs"],
                                         type=node["type"] if op in ("constant",) else None)
            for t, o in zip(outputs, g.graph["outputs"]):
                node_of[id(t)] = mapping[o]
            signature.append(("call", g.graph["uid"]))
        if id(target) not in node_of:
            raise KCompilerError("tape.gradient: the target was not computed while this tape was recording")
        source_nodes = []
        for s in source_list:
            if isinstance(s, Variable):
                source_nodes.append(b.variable(s))
            elif id(s) in node_of and (id(s) in self._watched or not isinstance(s, Tensor)):
                source_nodes.append(node_of[id(s)])
            else:
                source_nodes.append(None)
        from ..passes.autodiff import gradients
        wanted = [n for n in source_nodes if n is not None]
        dy = None
        if output_gradients is not None:
            a = to_array(output_gradients)
            dy = b.input("output_gradient", TensorType(a.shape, str(a.dtype)))
            feeds["output_gradient"] = a
        grads = gradients(b, node_of[id(target)], wanted, dy=dy) if wanted else []
        zero_fill = unconnected_gradients == "zero"
        outs, slots = [], []
        for n in source_nodes:
            g_node = grads[wanted.index(n)] if n is not None else None
            if g_node is None and zero_fill and n is not None:
                t = b.type(n)
                g_node = b.add("fill", (), {"shape": tuple(t.shape), "value": 0.0, "dtype": t.dtype})
            slots.append(None if g_node is None else len(outs))
            if g_node is not None:
                outs.append(g_node)
        if not outs:
            return None if single else [None] * len(source_list)
        b.g.graph["outputs"] = outs
        key = (tuple(signature), node_of[id(target)], tuple(source_nodes), tuple(slots),
               output_gradients is not None, unconnected_gradients)
        g = _compiled_gradients.get_or_make(key, lambda: b.g)  # compiled on first run, kept on the graph
        from ..runtime.executor import run_graph
        values, _ = run_graph(g, feeds)
        result = [None if slot is None else Tensor(values[slot]) for slot in slots]
        return result[0] if single else result
