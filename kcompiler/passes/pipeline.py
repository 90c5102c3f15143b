"""The compilation pipeline: trace -> shape inference -> autodiff (training) -> fusion ->
memory planning -> code generation. Each pass is a function graph -> graph; the
pipeline records the graph after each one under its stage name."""
from collections import OrderedDict

from ..errors import UnsupportedError
from .shape_inference import infer_shapes, specialize_input_type
from .trace import trace_model
from .training import differentiate, trace_training


def check_layers_supported(model):
    """Every layer must be a kcompiler layer; list all that are not, at once."""
    from ..keras.layers.base import Layer
    bad = [f"{getattr(l, 'name', '?')} ({type(l).__name__})" for l in getattr(model, "layers", [])
           if not isinstance(l, Layer)]
    if bad:
        raise UnsupportedError("unsupported layers (not kcompiler.keras layers): " + ", ".join(bad))


def front_stages(model, *, training=False, batch_size=None, label_type=None, input_shapes=None,
                 evaluation=False):
    """Trace and shape-check (and, for training with a batch size, differentiate). ``input_shapes``
    (name -> shape) fixes symbolic dimensions besides the batch, such as a sequence length.
    ``evaluation``: Keras's test step — loss and metrics in inference mode, no gradients."""
    check_layers_supported(model)
    stages = OrderedDict()
    if evaluation:
        g = trace_training(model, label_type, training=False)
    else:
        g = trace_training(model, label_type) if training else trace_model(model)
    stages["traced"] = g
    types = {}
    for n in g.graph["inputs"]:
        name = g.nodes[n]["attrs"]["name"]
        t = specialize_input_type(g.nodes[n]["type"], batch_size)
        if input_shapes and name in input_shapes:
            t = specialize_input_type(t, dims=dict(enumerate(input_shapes[name])))
        types[name] = t
    stages["shaped"] = infer_shapes(g, types, batch_size)
    if training and batch_size is not None:
        stages["differentiated"] = differentiate(stages["shaped"], model)
    return stages


def back_stages(stages, *, target="cpu", fuse=True, run_eagerly=False):
    """Fusion, memory planning and code generation for the last (static) stage; with
    ``run_eagerly`` the static graph runs on the numpy reference interpreter instead."""
    if run_eagerly:
        from ..runtime.executor import ReferenceProgram
        return ReferenceProgram(next(reversed(stages.values()))), stages
    if target == "cuda":
        raise UnsupportedError("the CUDA backend has not landed yet: compile with target='cpu'")
    from .lowering import lower_graph
    compiled, stages = lower_graph(next(reversed(stages.values())), fuse=fuse, stages=stages)
    return compiled, stages
