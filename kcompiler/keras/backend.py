"""Session state and the tracing machinery every op call goes through.

``apply_op`` is the single entry point of all math in the front end: with symbolic
operands it adds a node to the graph being traced; with concrete operands it
builds a one-op graph and runs it (eager mode). Layers trace their ``call`` the same
way in both modes, so a custom layer written with ``keras.ops`` compiles like a
built-in one.
"""
import re
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

from ..ir.graph import GraphBuilder
from ..ir.types import TensorType
from ..runtime.specializations import EAGER_GRAPHS_PER_PROCESS, SpecializationCache
from .tensor import SymbolicTensor, Tensor, is_symbolic, to_array

# ---- session state: automatic names, random numbers ------------------------------------

_name_counts = defaultdict(int)
_rng = np.random.default_rng()
_construction = None   # the graph that keras.Input tensors (functional API) live in
_eager_step = [0]      # the dropout counter of eager calls


def snake_case(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def unique_name(base, zero_based=True):
    """Keras's automatic names: dense, dense_1, dense_2 ... (input_1, input_2 ... when not zero-based)."""
    n = _name_counts[base]
    _name_counts[base] += 1
    if zero_based:
        return base if n == 0 else f"{base}_{n}"
    return f"{base}_{n + 1}"


def clear_session():
    """Reset automatic naming and the functional-API graph, as keras.backend.clear_session does."""
    global _construction
    _name_counts.clear()
    _construction = None


def set_random_seed(seed):
    """Seed initialisers, shuffling and dropout (keras.utils.set_random_seed)."""
    global _rng
    _rng = np.random.default_rng(seed)
    np.random.seed(seed)


def rng():
    return _rng


# ---- the default data format of image layers (keras.backend / keras.config) ---------------

_image_data_format = "channels_last"


def image_data_format():
    """The data_format that image layers take when theirs is None: 'channels_last' unless set."""
    return _image_data_format


def set_image_data_format(data_format):
    global _image_data_format
    value = str(data_format).lower()
    if value not in ("channels_last", "channels_first"):
        raise ValueError("The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
                         f"Received: data_format={data_format!r}")
    _image_data_format = value


def next_seed():
    """A fresh integer seed for an op that draws random numbers (dropout)."""
    return int(_rng.integers(0, 2 ** 31 - 1))


def construction_builder():
    global _construction
    if _construction is None:
        _construction = GraphBuilder(name="functional")
        _construction.records_history = True
        _construction.training = None
    return _construction


# ---- tracing ---------------------------------------------------------------------------

_active = []  # builders whose trace is in progress (innermost last)


@contextmanager
def tracing(builder):
    _active.append(builder)
    try:
        yield builder
    finally:
        _active.pop()


def active_builder():
    return _active[-1] if _active else None


def new_trace_builder(name="trace", training=False):
    b = GraphBuilder(name=name)
    b.records_history = False
    b.training = training
    return b


def rng_step_node(b):
    """The int64 scalar input that counts steps for dropout masks (one per graph)."""
    if "rng_step" not in b.g.graph:
        b.g.graph["rng_step"] = b.input("rng_step", TensorType((), "int64"))
    return b.g.graph["rng_step"]


def to_node(b, x, dtype_hint=None):
    """The node standing for operand ``x`` in the graph of builder ``b``."""
    from .variables import Variable
    if isinstance(x, SymbolicTensor):
        if x.builder is not b:
            raise ValueError("a tensor from another graph was used here: a layer or model traced in one "
                             "trace cannot use tensors captured from another")
        return x.node
    if isinstance(x, Variable):
        node = b.variable(x)
        if x.reads_pending_update:  # metric state: a read after this trace's assign sees the new value
            return b.g.graph["updates"].get(node, node)
        return node
    if isinstance(x, (bool, int, float, np.bool_)):
        if isinstance(x, (bool, np.bool_)):
            return b.array_constant(np.asarray(bool(x)))
        dtype = "float32" if isinstance(x, float) else "int32"
        if dtype_hint and (isinstance(x, int) or dtype_hint.startswith("float")):
            dtype = dtype_hint  # Python numbers take the dtype of the tensors they meet
        return b.scalar(x, dtype)
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
        return b.scalar(x.item(), str(x.dtype))
    a = to_array(x)
    if dtype_hint and a.dtype.kind == "i" and dtype_hint.startswith("float"):
        a = a.astype(dtype_hint)
    return b.array_constant(a)


def assign(variable, value):
    """Record that ``variable`` takes ``value`` once the traced step has run (a state update:
    BatchNormalization's moving statistics, optimizer slots and weights)."""
    b = getattr(value, "builder", None) or active_builder()
    if b is None:
        raise RuntimeError(f"assign({variable.path!r}): state updates are only recorded while tracing")
    node = value.node if isinstance(value, SymbolicTensor) and value.builder is b else to_node(b, value)
    b.g.graph["updates"][b.variable(variable)] = node


def _dtype_hint(inputs):
    """Python numbers follow the dtype of the tensors they meet (x * 2 stays float32)."""
    from .variables import Variable
    for x in inputs:
        if isinstance(x, (SymbolicTensor, Tensor, Variable)):
            return x.dtype
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            return "float32"
    return None


def apply_op(op, inputs, **attrs):
    """Apply primitive ``op`` to ``inputs``: trace it, or run it now on concrete values."""
    builder = next((x.builder for x in inputs if is_symbolic(x)), None) or active_builder()
    if builder is None:
        return _eager_op(op, inputs, attrs)
    hint = _dtype_hint(inputs)
    nodes = [to_node(builder, x, hint) for x in inputs]
    nid = builder.add(op, nodes, attrs)
    t = builder.type(nid)
    if isinstance(t, tuple):
        return tuple(SymbolicTensor(builder, builder.tuple_item(nid, i)) for i in range(len(t)))
    out = SymbolicTensor(builder, nid)
    if getattr(builder, "records_history", False) and builder.layer is None:
        from .functional import record_op_call
        record_op_call(op, inputs, attrs, out)
    return out


# signature of an eager op call -> its one-op graph (compiled on first run); the least recently used are dropped
_eager_graphs = SpecializationCache(EAGER_GRAPHS_PER_PROCESS)


def _eager_op(op, inputs, attrs):
    """Run one op on concrete values: a one-node graph, executed by the eager engine
    (compiled kernels), cached per (op, attrs, operand types) so repeated calls reuse it."""
    from ..runtime.executor import run_graph
    from . import tape
    from .variables import Variable
    hint = _dtype_hint(inputs)
    feeds, signature, arrays = {}, [op, repr(sorted(attrs.items()))], []
    for i, x in enumerate(inputs):
        if isinstance(x, Variable):
            signature.append(("var", x.uid))
            arrays.append(x)
        elif isinstance(x, (int, float, bool)):
            signature.append(("scalar", type(x).__name__, x, hint))
            arrays.append(x)
        else:
            a = x if isinstance(x, np.ndarray) and x.ndim == 0 else to_array(x)
            if hint and a.dtype.kind == "i" and hint.startswith("float") and isinstance(x, (list, tuple)):
                a = a.astype(hint)
            signature.append(("array", a.shape, str(a.dtype)))
            feeds[f"x{i}"] = a
            arrays.append(a)
    key = tuple(signature)

    def trace():
        b = new_trace_builder(name=op)
        nodes = []
        for i, x in enumerate(arrays):
            if isinstance(x, Variable):
                nodes.append(b.variable(x))
            elif isinstance(x, (int, float, bool)):
                nodes.append(to_node(b, x, hint))
            else:
                nodes.append(b.input(f"x{i}", TensorType(x.shape, str(x.dtype))))
        with tracing(b):
            nid = b.add(op, nodes, attrs)
        t = b.type(nid)
        b.g.graph["outputs"] = [b.tuple_item(nid, i) for i in range(len(t))] if isinstance(t, tuple) else [nid]
        b.g.graph["tuple_output"] = isinstance(t, tuple)
        return b.g

    g = _eager_graphs.get_or_make(key, trace)  # traced once, under compile_lock
    outs, _ = run_graph(g, feeds)
    results = [Tensor(v) for v in outs]
    if tape._active_tapes:
        tape.record_graph(g, feeds, {f"x{i}": x for i, x in enumerate(inputs)
                                     if f"x{i}" in feeds}, results)
    return tuple(results) if g.graph["tuple_output"] else results[0]
