"""The IR: a networkx MultiDiGraph with one node per primitive op.

Node attributes: ``op`` (registry name), ``attrs`` (static parameters, plain data),
``type`` (a TensorType, or a tuple of them for multi-output ops), ``shape`` and
``dtype`` (copied from ``type`` for readers), ``layer`` (the Keras layer it came
from, or None); after fusion ``fused`` (the member ops' names); in the scheduled stage
``kernel`` (its target-neutral kernel description, kcompiler/schedule/kernel.py). An edge
u -> v with key k means "u is operand k of v", so ``mul(x, x)`` keeps both operands.

Graph attributes (``g.graph``) — the one list of them:
  name, uid        the graph's name; a process-unique id (caches key on it: id() is reused)
  next_id          the next node id GraphBuilder hands out
  inputs, outputs  node ids in order; output_names: names of the outputs of training and
                   evaluation graphs ('loss', then each metric)
  variables        node id -> keras Variable (the buffer a compiled step reads and writes);
                   variable_nodes: Variable uid -> node id (optimizers find their slots)
  constants        node id -> numpy array, for array constants
  updates          variable node -> node of its new value (optimizer steps, BatchNormalization
                   statistics, metric state): committed only by a step that reports no error
  loss             the total loss node (training graphs); activity_losses: activity
                   regularisation terms collected while tracing; stateful_outputs: outputs
                   that are stateful metrics' results (reported as they are, not averaged)
  rng_step         the int64 input node counting steps, for dropout masks
  model            the traced model's name
  tuple_output     eager one-op graphs: the op returns a tuple
  notes            human-readable notes of the passes (why a pair was not fused, ...), in dumps
  plan             memory plan (passes/memory_plan.py): order, buffers, params, root, in_place,
                   arena_bytes, error_record
  _compiled        eager graphs: their executable once compiled (runtime/executor.py)
"""
import heapq
import itertools

import networkx as nx

from ..errors import ShapeError
from .registry import get_op
from .types import TensorType


_graph_uids = itertools.count()


def new_graph(name="graph"):
    g = nx.MultiDiGraph(name=name)
    # uid: a process-unique identity for caches keyed by graph (id() can be reused after GC)
    g.graph.update(inputs=[], outputs=[], variables={}, constants={}, updates={}, next_id=0,
                   uid=next(_graph_uids))
    return g


def operands(g, nid):
    """The operand node ids of ``nid`` in operand order."""
    # _pred[nid] maps each operand to its edge keys (operand positions; mul(x, x) has two).
    # The raw adjacency dict, not the read-only g.pred view: every pass asks this of every
    # node, and the view objects made it 5x slower.
    slots = sorted((k, u) for u, keys in g._pred[nid].items() for k in keys)
    return [u for _, u in slots]


def copy_graph(g):
    """What ``g.copy()`` makes (new graph, node and edge attribute dicts copied, their values
    shared), built directly into networkx's adjacency dicts: every pass starts with a copy
    (earlier stages stay as they were, for dumps), and ``copy()`` re-adds each edge through
    ``add_edges_from``, a tenth of a warm start."""
    h = g.__class__()
    h.graph.update(g.graph)
    h._node.update((n, dict(attrs)) for n, attrs in g._node.items())
    for n in g._node:
        h._succ[n] = {}
        h._pred[n] = {}
    for u, nbrs in g._succ.items():
        for v, keys in nbrs.items():
            # a MultiDiGraph's succ[u][v] and pred[v][u] are one dict of edge keys
            copied = {k: dict(data) for k, data in keys.items()}
            h._succ[u][v] = copied
            h._pred[v][u] = copied
    return h


def node_type(g, nid):
    return g.nodes[nid]["type"]


def topo_order(g):
    """Node ids in a deterministic topological order (ties broken by id = creation order).

    networkx's lexicographical_topological_sort, written for the IR's integer ids: the
    pipeline orders each graph several times, and the general one was a tenth of a warm
    start."""
    waiting = {n: len(preds) for n, preds in g._pred.items()}
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for v in g._succ[n]:
            waiting[v] -= 1
            if not waiting[v]:
                heapq.heappush(ready, v)
    if len(order) != len(waiting):
        raise nx.NetworkXUnfeasible(f"graph {g.graph.get('name')!r} has a cycle")
    return order


def redirect_uses(g, old, new, keep=()):
    """Every use of node ``old`` (its consumers' operand edges, except those of the nodes in
    ``keep``; graph outputs; state updates) becomes a use of ``new``, operand positions kept."""
    for _, v, key in list(g.out_edges(old, keys=True)):
        if v not in keep:
            g.remove_edge(old, v, key)
            g.add_edge(new, v, key=key)
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]
    g.graph["updates"] = {var: (new if val == old else val) for var, val in g.graph["updates"].items()}


def set_type(g, nid, t):
    node = g.nodes[nid]
    node["type"] = t
    if isinstance(t, tuple):
        node["shape"] = [x.shape for x in t]
        node["dtype"] = [x.dtype for x in t]
    else:
        node["shape"] = t.shape
        node["dtype"] = t.dtype


def infer_type(g, nid):
    """Run the shape rule of node ``nid`` on its operands' current types."""
    node = g.nodes[nid]
    op = get_op(node["op"])
    in_types = [node_type(g, u) for u in operands(g, nid)]
    try:
        return op.shape_rule(in_types, node["attrs"])
    except ShapeError as e:
        where = f"{node['layer']}: " if node.get("layer") else ""
        raise ShapeError(f"{where}{e}") from None


class GraphBuilder:
    """Adds nodes to a graph, running each op's shape rule as it goes.

    Tracing, the autodiff pass and the VJP rules all build graphs through this one
    class, so every node has a checked type the moment it exists.
    """

    def __init__(self, g=None, name="graph"):
        self.g = g if g is not None else new_graph(name)
        self.layer = None  # the layer (as 'Class \'name\'') whose call is being traced

    def _new_id(self):
        nid = self.g.graph["next_id"]
        self.g.graph["next_id"] = nid + 1
        return nid

    def add(self, op, inputs=(), attrs=None, type=None):
        """Add a node for ``op`` with operand ids ``inputs``; return its id."""
        nid = self._new_id()
        self.g.add_node(nid, op=op, attrs=dict(attrs or {}), layer=self.layer)
        for k, u in enumerate(inputs):
            if u not in self.g:
                raise ValueError(f"operand {u} of new {op} node is not in graph {self.g.graph['name']!r}")
            self.g.add_edge(u, nid, key=k)
        try:
            set_type(self.g, nid, type if type is not None else infer_type(self.g, nid))
        except Exception:
            self.g.remove_node(nid)
            raise
        return nid

    # Conveniences used by VJP rules and passes: b.op('mul', x, y) reads like the math.
    def op(self, op, *inputs, **attrs):
        return self.add(op, inputs, attrs)

    def type(self, nid):
        return node_type(self.g, nid)

    def shape(self, nid):
        return node_type(self.g, nid).shape

    def dtype(self, nid):
        return node_type(self.g, nid).dtype

    def operands(self, nid):
        return operands(self.g, nid)

    def attrs(self, nid):
        return self.g.nodes[nid]["attrs"]

    def scalar(self, value, dtype="float32"):
        return self.add("constant", (), {"value": float(value) if dtype.startswith("float") else int(value)},
                        type=TensorType((), dtype))

    def array_constant(self, array):
        t = TensorType(array.shape, str(array.dtype))
        nid = self.add("constant", (), {"array": True}, type=t)
        self.g.graph["constants"][nid] = array
        return nid

    def input(self, name, t):
        nid = self.add("input", (), {"name": name, "index": len(self.g.graph["inputs"])}, type=t)
        self.g.graph["inputs"].append(nid)
        return nid

    def variable(self, var):
        """The node of Keras variable ``var`` (one node per variable per graph)."""
        memo = self.g.graph.setdefault("variable_nodes", {})  # Variable.uid -> node id
        if var.uid in memo:
            return memo[var.uid]
        t = TensorType(var.shape, var.dtype)
        nid = self.add("variable", (), {"name": var.path, "trainable": bool(var.trainable)}, type=t)
        self.g.graph["variables"][nid] = var
        memo[var.uid] = nid
        return nid

    def tuple_item(self, nid, index):
        return self.add("tuple_item", (nid,), {"index": index})


def inline_constants(g, nid):
    """{operand index: value} of the operands of ``nid`` that are scalar constants known at
    compile time: kernels use the value instead of loading it."""
    out = {}
    for i, u in enumerate(operands(g, nid)):
        node = g.nodes[u]
        if node["op"] == "constant" and not node["attrs"].get("array") and node["type"].shape == ():
            out[i] = node["attrs"]["value"]
    return out
