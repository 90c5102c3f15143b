"""Tracing: a Keras model -> the IR graph of its forward pass.

The model is called on symbolic inputs (batch and, for sequences, time left as
None); every op its layers emit becomes a node. Python control flow in a
subclassed model's call is resolved here, at trace time.
"""
from ..errors import UnsupportedError
from ..keras import backend
from ..keras.layers.base import flatten
from ..keras.tensor import SymbolicTensor


def trace_model(model, training=False):
    b = backend.new_trace_builder(name=model.name, training=training)
    specs = model.input_types()
    xs = [SymbolicTensor(b, b.input(name, t)) for name, t in specs]
    outputs = model(xs[0] if len(xs) == 1 else xs, training=training)
    b.g.graph["outputs"] = [o.node for o in flatten(outputs)]
    b.g.graph["model"] = model.name
    return b.g


def check_layers_supported(model):
    """Every layer must be a kcompiler layer; list all that are not, at once."""
    from ..keras.layers.base import Layer
    bad = [f"{getattr(l, 'name', '?')} ({type(l).__name__})" for l in getattr(model, "layers", [])
           if not isinstance(l, Layer)]
    if bad:
        raise UnsupportedError("unsupported layers (not kcompiler.keras layers): " + ", ".join(bad))
