"""The compilation pipeline: trace -> shape inference -> autodiff (training) -> fusion ->
memory planning -> code generation. Each pass is a function graph -> graph; the
pipeline records the graph after each one under the pass's stage name."""
from collections import OrderedDict

from ..errors import UnsupportedError
from .shape_inference import infer_shapes, specialize_input_type
from .trace import trace_model


def check_layers_supported(model):
    """Every layer must be a kcompiler layer; list all that are not, at once."""
    from ..keras.layers.base import Layer
    bad = [f"{getattr(l, 'name', '?')} ({type(l).__name__})" for l in getattr(model, "layers", [])
           if not isinstance(l, Layer)]
    if bad:
        raise UnsupportedError("unsupported layers (not kcompiler.keras layers): " + ", ".join(bad))


def run_pipeline(model, *, training=False, batch_size=None):
    """Run the passes that exist and return the ordered stages {name: graph}."""
    check_layers_supported(model)
    stages = OrderedDict()
    g = trace_model(model, training=training)
    stages["traced"] = g
    input_types = {g.nodes[n]["attrs"]["name"]: specialize_input_type(g.nodes[n]["type"], batch_size)
                   for n in g.graph["inputs"]}
    stages["shaped"] = infer_shapes(g, input_types)
    return stages
