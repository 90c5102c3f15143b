"""The compilation pipeline, in order:

    trace -> shape inference -> autodiff (training)          front_stages: target-neutral passes
    -> simplify -> fusion -> memory planning -> scheduling   back_stages:  target-neutral passes,
    -> the backend renders, compiles and binds                             told the backend's
                                                                           capabilities
Each pass is a function graph -> graph (kcompiler/passes/, one per file); the pipeline
records the graph after each under its stage name. This module is the only place that joins
passes and backends: passes never import a backend, backends never run a pass.
"""
from collections import OrderedDict

from .codegen.backend import get_backend
from .options import resolve
from .passes.fusion import (fuse_bias_gradients, fuse_dy_producers, fuse_elementwise, fuse_epilogues, fuse_pooling,
                             fuse_updates, pair_conv_gradients)
from .passes.memory_plan import plan_memory
from .passes.pool_argmax import keep_pool_argmax
from .passes.recurrent_reserve import keep_recurrent_reserves
from .passes.schedule import schedule_kernels
from .passes.shape_inference import infer_shapes, specialize_input_type
from .passes.simplify import simplify
from .passes.trace import check_layers_supported, trace_model
from .passes.training import differentiate, trace_training


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


def lower_graph(g, *, target="cpu", fuse=True, stages=None, options=None):
    """The back half of the pipeline on static graph ``g``: recurrent reserves, max pooling's
    window positions kept for its gradient, and fusion (asking the backend which recurrent ops
    keep a reserve, whether it has the pooling ops for that, which heads take epilogues, which
    of them also pool their result, which weight gradients take their bias gradient and
    compute their dy, and where a convolution's two gradients share one kernel), memory
    planning, scheduling, then the backend generates, compiles and binds. Returns
    (executable, stages)."""
    options = resolve(options)
    backend = get_backend(target)
    stages = stages if stages is not None else OrderedDict()
    g = simplify(g)
    capabilities = backend.capabilities()
    # (a bounds-checked build may fail in any kernel: its updates wait for the end of the step)
    in_place = capabilities.in_place_updates and not options.bounds_check
    g = keep_recurrent_reserves(g, capabilities.recurrent_reserve)
    if fuse:
        if capabilities.pool_argmax:  # before fusion: the relu_grad it moves fuses where it lands
            g = keep_pool_argmax(g, pooled_by=capabilities.pool_epilogue_heads)
        g = fuse_epilogues(fuse_elementwise(g), heads=capabilities.epilogue_heads, updates_in_place=in_place)
        g = fuse_pooling(g, heads=capabilities.pool_epilogue_heads)
        g = fuse_bias_gradients(g, heads=capabilities.bias_grad_heads)
        if capabilities.conv_grads_sharing_dy is not None:
            g = pair_conv_gradients(g, lambda geometry: capabilities.conv_grads_sharing_dy(geometry, options))
        g = fuse_dy_producers(g, heads=capabilities.bias_grad_dy_heads)
        if capabilities.merges_updates:
            g = fuse_updates(g)
    stages["fused"] = g
    g = plan_memory(g, in_place_updates=in_place)
    stages["planned"] = g
    g = schedule_kernels(g)
    g.graph["notes"] = list(g.graph.get("notes", [])) + backend.notes(options)  # a new list: earlier stages keep theirs
    stages["scheduled"] = g
    return backend.lower(g, options), stages


def back_stages(stages, *, target="cpu", fuse=True, run_eagerly=False, options=None):
    """``lower_graph`` on the last (static) stage; with ``run_eagerly`` the static graph runs on
    the numpy reference interpreter instead."""
    if run_eagerly:
        from .ir.interpreter_reference import ReferenceProgram
        return ReferenceProgram(next(reversed(stages.values()))), stages
    return lower_graph(next(reversed(stages.values())), target=target, fuse=fuse, stages=stages, options=options)
