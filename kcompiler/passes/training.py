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
"""
from ..errors import KCompilerError, ShapeError
from ..ir.graph import GraphBuilder
from ..ir.types import TensorType
from ..keras import backend, ops
from ..keras.layers.base import flatten
from ..keras.tensor import SymbolicTensor
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
        stateful = []
        for (log_name, fn), entry in zip(getattr(model, "compiled_metric_fns", []),
                                         getattr(model, "compiled_metric_entries", [])):
            y_true, y_pred = y_trues[entry.output_index], y_preds[entry.output_index]
            if fn is not None:  # a mean over samples: the batch's mean, averaged by the runtime
                values.append((log_name, ops.mean(ops.cast(fn(y_true, y_pred), "float32"))))
            else:  # state across batches: update it in the step, report its result so far
                entry.metric.update_state(y_true, y_pred,
                                          sample_weight=weights[entry.output_index] if entry.weighted else None)
                values.append((log_name, ops.cast(entry.metric.result(), "float32")))
                stateful.append(log_name)
    b.g.graph["outputs"] = [v.node for _, v in values]
    b.g.graph["output_names"] = [name for name, _ in values]
    b.g.graph["label_names"] = names
    b.g.graph["sample_weight_names"] = weight_names
    b.g.graph["stateful_outputs"] = stateful
    b.g.graph["loss"] = total.node
    return b.g


def differentiate(g, model):
    """Add gradients of the loss w.r.t. every trainable weight and the optimizer's update
    of each (a copy of the shape-specialised graph ``g``)."""
    g = g.copy()
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
    pairs = [(SymbolicTensor(b, gn), var) for gn, var in zip(grads, used) if gn is not None]
    if not pairs:
        raise KCompilerError(f"model '{model.name}': no trainable weight receives a gradient from the loss")
    with backend.tracing(b):
        model.optimizer.trace_updates(pairs)
    return g
