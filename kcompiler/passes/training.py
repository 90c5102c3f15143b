"""The training step as one graph: forward (training mode), loss with regularisation,
gradients (autodiff pass), optimizer updates, constraints, batch metrics.

``trace_training(model, label_type)`` traces the forward pass and the loss with a
symbolic batch (stage "traced"); ``differentiate(g, model)`` takes the
shape-specialised graph and adds the backward pass and the updates (stage
"differentiated"). Graph inputs: the model's inputs, ``y`` (labels), ``sample_weight``
(per sample; ones when the caller gives none) and ``rng_step`` (the step counter
that keys dropout masks); a model with several outputs has a label and a sample-weight
input per labelled output (``label_names``, ``sample_weight_names``). Graph outputs: the
loss, then (several outputs) each output's loss, then one value per metric.

Under data-parallel training (keras.distribution.DataParallel, kcompiler/distribute/) the
traced step (training or test) has one ``all_reduce`` node (ops/collective.py): it sums the
state increments of the metrics that keep state across batches, whose results then read the
summed state, and its extra slots carry the runtime's sums of the loss and the batch metrics.
The training step also takes ``gradient_scale`` (this rank's share of the global batch): every gradient is
multiplied by it and, with the new values of the state the forward pass updates (moving
statistics, each times 1 / ranks), joins that node's operands; the optimizer and the state
updates read its outputs: summed over the ranks, they are the global batch's gradients and the
ranks' mean statistics.
"""
from ..errors import KCompilerError, ShapeError
from ..ir.graph import GraphBuilder, copy_graph, operands as graph_operands
from ..ir.types import TensorType
from ..keras import backend, ops
from ..keras.layers.base import flatten
from ..keras.tensor import SymbolicTensor
from ..keras.distribution import model_distribution
from .autodiff import gradients


def default_label_type(model, loss, y_pred_type):
    """The labels' type when the caller gives none: sparse losses take class ids."""
    name = type(loss).__name__ if loss is not None else ""
    fn_name = getattr(getattr(loss, "fn", None), "__name__", "")
    if "Sparse" in name or "sparse" in fn_name:
        return TensorType(y_pred_type.shape[:-1], "int32")
    return TensorType(y_pred_type.shape, y_pred_type.dtype)


def label_names(model):
    """The names of the traced step's label inputs: ``y`` for a single output; ``y_<i>`` for each
    output ``i`` of several that has a loss or a metric (the others take no labels)."""
    outputs = getattr(model, "compiled_outputs", None) or []
    if len(outputs) <= 1:
        return ["y"]
    measured = {e.output_index for e in getattr(model, "compiled_metric_entries", [])}
    return [f"y_{o.index}" for o in outputs if o.loss is not None or o.index in measured]


def sample_weight_names(model):
    """The names of the traced step's sample-weight inputs, one per label input:
    ``sample_weight``, or ``sample_weight_<i>`` for output ``i`` of several."""
    return ["sample_weight" if name == "y" else f"sample_weight_{name[2:]}" for name in label_names(model)]


def trace_training(model, label_type=None, training=True):
    """The forward pass, loss and batch metrics; ``training=False`` traces them in inference mode
    (dropout off, moving statistics) for Keras's test step, which adds no gradients.
    ``label_type``: the labels' type, or a list of one per label input (``label_names``).

    Outputs of the graph: the total loss (each output's loss times its weight, summed, plus the
    regularisation penalties), then each output's own unweighted loss (``<output>_loss``, when
    more than one output has a loss), then one value per metric: a mean-of-samples metric's mean
    over the batch, or the result so far of a metric that keeps state (its update is in the
    step). Metrics take the sample weights only when given as ``weighted_metrics``, as in Keras 3."""
    outputs_spec = getattr(model, "compiled_outputs", None)
    if getattr(model, "compiled_loss", None) is None or not outputs_spec:
        raise KCompilerError(f"model '{model.name}' was not compiled with a loss: call "
                             "model.compile(optimizer=..., loss=...) before training")
    b = backend.new_trace_builder(name=f"{model.name}_{'train' if training else 'test'}_step", training=training)
    xs = [SymbolicTensor(b, b.input(name, t)) for name, t in model.input_types()]
    y_preds = flatten(model(xs[0] if len(xs) == 1 else xs, training=training))
    if len(y_preds) != len(outputs_spec):
        raise ShapeError(f"model '{model.name}' has {len(y_preds)} outputs but was compiled for "
                         f"{len(outputs_spec)}: call compile() again")
    names = label_names(model)
    label_types = label_type if isinstance(label_type, (list, tuple)) else [label_type] * len(names)
    if len(label_types) != len(names):
        raise ShapeError(f"model '{model.name}': {len(label_types)} label arrays for {len(names)} labelled outputs")
    y_trues = {}
    for name, t in zip(names, label_types):
        index = 0 if name == "y" else int(name[2:])
        if t is None:
            t = default_label_type(model, outputs_spec[index].loss, y_preds[index].type)
        y_trues[index] = SymbolicTensor(b, b.input(name, TensorType((None,) + tuple(t.shape[1:]), str(t.dtype))))
    weight_names = sample_weight_names(model)
    weights = {}
    for label, name in zip(names, weight_names):
        weights[0 if label == "y" else int(label[2:])] = SymbolicTensor(
            b, b.input(name, TensorType((None,), "float32")))
    sample_weight = next(iter(weights.values()))
    several = len(outputs_spec) > 1
    with backend.tracing(b):
        total, output_losses = None, []
        for spec in outputs_spec:
            if spec.loss is None:
                continue
            y_true, y_pred = y_trues[spec.index], y_preds[spec.index]
            try:
                loss = spec.loss(y_true, y_pred, sample_weight=weights[spec.index])
            except ShapeError as e:
                where = f" of output {spec.name!r}" if several else ""
                raise ShapeError(f"loss {getattr(spec.loss, 'name', spec.loss)}{where}: labels of shape "
                                 f"{y_true.shape} ({y_true.dtype}) do not fit predictions of shape "
                                 f"{y_pred.shape}: {e}") from None
            output_losses.append((f"{spec.name}_loss", loss))
            weighted = loss if spec.loss_weight is None else ops.multiply(loss, spec.loss_weight)
            total = weighted if total is None else ops.add(total, weighted)
        if total is None:
            raise KCompilerError(f"model '{model.name}': every output's loss is None; nothing to train")
        for var in model.trainable_weights:
            if var.regularizer is not None:
                total = ops.add(total, var.regularizer(var))
        activity = b.g.graph.get("activity_losses", [])
        if activity:  # Keras divides activity penalties by the batch size (counted without a fill op,
            # whose shape would stay symbolic)
            batch = ops.sum(ops.where(ops.equal(sample_weight, sample_weight), 1.0, 1.0))
            for nid in activity:
                total = ops.add(total, ops.divide(SymbolicTensor(b, nid), batch))
        values = [("loss", total)] + (output_losses if len(output_losses) > 1 else [])
        entries = list(zip(getattr(model, "compiled_metric_fns", []), getattr(model, "compiled_metric_entries", [])))
        for (_, fn), entry in entries:
            if fn is None:  # state across batches: update it in the step, report its result so far (below)
                entry.metric.update_state(y_trues[entry.output_index], y_preds[entry.output_index],
                                          sample_weight=weights[entry.output_index] if entry.weighted else None)
        distribution = model_distribution(model)
        if distribution is not None:  # every rank's state increments, summed before the results read them
            collective = _all_reduce_metric_states(b, [e.metric for (_, fn), e in entries if fn is None])
        stateful = []
        for (log_name, fn), entry in entries:
            if fn is not None:  # a mean over samples: the batch's mean, averaged by the runtime
                y_true, y_pred = y_trues[entry.output_index], y_preds[entry.output_index]
                values.append((log_name, ops.mean(ops.cast(fn(y_true, y_pred), "float32"))))
            else:
                values.append((log_name, ops.cast(entry.metric.result(), "float32")))
                stateful.append(log_name)
    b.g.graph["outputs"] = [v.node for _, v in values]
    if distribution is not None:  # distribute/step.py: a status per rank, the sample count, a sum per output
        b.g.nodes[collective]["attrs"]["extra_slots"] = distribution.world_size + 1 + len(b.g.graph["outputs"])
    b.g.graph["output_names"] = [name for name, _ in values]
    b.g.graph["label_names"] = names
    b.g.graph["sample_weight_names"] = weight_names
    b.g.graph["stateful_outputs"] = stateful
    b.g.graph["loss"] = total.node
    return b.g


def differentiate(g, model):
    """Add gradients of the loss w.r.t. every trainable weight and the optimizer's update
    of each (a copy of the shape-specialised graph ``g``)."""
    g = copy_graph(g)
    for key in ("updates", "variables", "variable_nodes", "constants"):  # this stage adds to them
        g.graph[key] = dict(g.graph.get(key, {}))
    b = GraphBuilder(g)
    b.records_history, b.training = False, True
    variables_by_node = g.graph["variables"]
    trainable = [var for var in model.trainable_weights]
    node_of = {v.uid: n for n, v in variables_by_node.items()}
    wrt = [node_of[v.uid] for v in trainable if v.uid in node_of]
    used = [v for v in trainable if v.uid in node_of]
    grads = gradients(b, g.graph["loss"], wrt)
    pairs = [(gn, var) for gn, var in zip(grads, used) if gn is not None]
    if not pairs:
        raise KCompilerError(f"model '{model.name}': no trainable weight receives a gradient from the loss")
    distribution = model_distribution(model)
    if distribution is not None:
        pairs = _all_reduce(b, g, pairs, distribution.world_size)
    pairs = [(SymbolicTensor(b, gn), var) for gn, var in pairs]
    with backend.tracing(b):
        model.optimizer.trace_updates(pairs)
    return g


def _all_reduce_metric_states(b, metrics):
    """One all_reduce node over the increments this step makes to ``metrics``' state variables;
    their updates become variable + the summed increment. Returns the node."""
    g = b.g
    updates, nodes = g.graph["updates"], g.graph.get("variable_nodes", {})
    increments = []
    for metric in metrics:
        for var in metric.variables:
            vnode = nodes.get(var.uid)
            if vnode is None or vnode not in updates:
                continue
            if var.dtype != "float32":
                raise KCompilerError(f"metric {metric.name!r}: data-parallel training sums its state over the ranks; "
                                     f"variable {var.path!r} must be float32, not {var.dtype}")
            increments.append((vnode, b.op("sub", updates[vnode], vnode)))
    reduced = b.add("all_reduce", [d for _, d in increments], {"extra_slots": 0})
    for k, (vnode, _) in enumerate(increments):
        updates[vnode] = b.op("add", vnode, b.tuple_item(reduced, k))
    g.graph["reduced_updates"] = [vnode for vnode, _ in increments]
    return reduced


def _all_reduce(b, g, pairs, world_size):
    """[(gradient, variable)] read after the step's all_reduce node, which takes the scaled
    gradients and the forward pass's state updates (averaged over ``world_size`` ranks) before
    the operands the trace gave it (the metric states' increments); rewires those updates."""
    g.graph["inputs"] = list(g.graph["inputs"])  # the copy shares the traced graph's list
    traced = next(n for n in g.nodes if g.nodes[n]["op"] == "all_reduce")
    scale = b.input("gradient_scale", TensorType((), "float32"))
    reduced_already = set(g.graph.get("reduced_updates", ()))
    states = [(var, value) for var, value in g.graph["updates"].items() if var not in reduced_already]
    for var, value in states:
        if b.dtype(value) != "float32":
            raise KCompilerError(f"variable {g.nodes[var]['attrs']['name']!r}: data-parallel training averages "
                                 f"the state a step updates over the ranks; it must be float32, not {b.dtype(value)}")
    mean = b.scalar(1.0 / world_size)
    operands = [b.op("mul", gn, scale) for gn, _ in pairs] + [b.op("mul", value, mean) for _, value in states]
    first_traced = len(operands)
    reduced = b.add("all_reduce", operands + graph_operands(g, traced), dict(g.nodes[traced]["attrs"]))
    for _, item, key in list(g.out_edges(traced, keys=True)):  # the metric states' items, moved along
        g.remove_edge(traced, item, key)
        g.add_edge(reduced, item, key=key)
        attrs = g.nodes[item]["attrs"]  # shared with the graph copied from: replaced, not changed
        g.nodes[item]["attrs"] = dict(attrs, index=attrs["index"] + first_traced)
    g.remove_node(traced)
    items = [b.tuple_item(reduced, i) for i in range(len(operands))]
    for (var, _), item in zip(states, items[len(pairs):]):
        g.graph["updates"][var] = item
    return [(item, var) for item, (_, var) in zip(items, pairs)]
