"""Model.compile: resolving the optimizer, the loss and the metrics as Keras does.

The compiled training step computes each metric's value over the batch in generated
code (the mean of the metric's per-sample function); the runtime averages batch
values over the epoch as Keras's running means do.
"""
from . import distribution as distribution_mod, losses as losses_mod, metrics as metrics_mod


def batch_metric_fn(metric):
    """A function (y_true, y_pred) -> per-sample values for a mean-of-samples metric; None for a
    metric that keeps state across batches (Precision, Recall, TruePositives, ...): the step
    updates its state variables in the graph and returns its result (passes/training.py)."""
    fn = getattr(metric, "_fn", None)
    if fn is None:
        return None
    kwargs = getattr(metric, "_fn_kwargs", {})
    return lambda y_true, y_pred: fn(y_true, y_pred, **kwargs)


def stateful_metric_entries(model):
    """The compiled metrics whose step reports their value over the epoch so far (state kept
    across batches in the step): those without a per-sample function (Precision, AUC, ...) and
    every weighted metric (a weighted mean: total and sum of weights)."""
    return [e for e in getattr(model, "compiled_metric_entries", []) if e.weighted or batch_metric_fn(e.metric) is None]


def reset_stateful_metrics(model):
    """Zero the state of the compiled metrics that accumulate over an epoch (in place, so compiled
    steps holding their buffers see it)."""
    for entry in stateful_metric_entries(model):
        entry.metric.reset_state()


class CompiledOutput:
    """One model output as compile() configured it: its name (Keras's: the output layer's), its
    loss (None: the output is not trained) and that loss's weight (None: 1)."""

    def __init__(self, index, name, loss, loss_weight):
        self.index, self.name, self.loss, self.loss_weight = index, name, loss, loss_weight


class MetricEntry:
    """One compiled metric: the name its value has in the logs, the metric object, the index of
    the output it measures, and whether it takes the sample weights (``weighted_metrics``)."""

    def __init__(self, log_name, metric, output_index, weighted):
        self.log_name, self.metric, self.output_index, self.weighted = log_name, metric, output_index, weighted


def output_names(model):
    """The names Keras gives the model's outputs: the output layers' names (functional models),
    ``output_<i>`` otherwise; a single-output model has one."""
    outputs = getattr(model, "outputs", None) if getattr(model, "_is_functional", False) else None
    if not outputs:
        return [f"output_{i + 1}" for i in range(_output_count(model))]
    names = []
    for i, t in enumerate(outputs):
        record = getattr(t, "_keras_history", None)
        names.append(record.layer.name if record is not None and record.layer is not None else f"output_{i + 1}")
    return names


def _output_count(model):
    try:
        shape = _output_shape(model)
    except ValueError:  # a subclassed model not built yet: one output until it says otherwise
        return 1
    return len(shape) if isinstance(shape, list) else 1


def _output_shapes(model):
    try:
        shape = _output_shape(model)
    except ValueError:
        return None
    return shape if isinstance(shape, list) else [shape]


def _per_output(value, names, argument):
    """compile()'s per-output argument as one entry per output: a list/tuple of one per output,
    or a dict keyed by output name (missing names: None)."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ValueError(f"Expected keys {names} in {argument} dict, but found {argument}.keys()="
                             f"{list(value)}: {unknown} name no output of the model")
        return [value.get(name) for name in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"`{argument}` must hold one entry per output of the model {names}, got "
                             f"{len(value)}: {argument}={value!r}")
        return list(value)
    return None


def _resolve_losses(loss, loss_weights, names):
    """CompiledOutput per output: one loss for all outputs, or one per output (list or dict)."""
    losses = _per_output(loss, names, "loss") if len(names) > 1 else None
    if len(names) == 1 and isinstance(loss, dict) and len(loss) == 1:  # by the output's name
        loss = next(iter(loss.values()))
    if losses is None:
        if isinstance(loss, dict) or (isinstance(loss, (list, tuple)) and len(loss) != 1):
            raise ValueError(f"`loss` as a {type(loss).__name__} needs one entry per output; the model has "
                             f"{len(names)} output(s) {names}, got loss={loss!r}")
        single = loss[0] if isinstance(loss, (list, tuple)) else loss
        losses = [single] * len(names)
    if loss_weights is None:
        weights = [None] * len(names)
    elif isinstance(loss_weights, (int, float)) and not isinstance(loss_weights, bool):
        weights = [float(loss_weights)] * len(names)
    else:
        weights = _per_output(loss_weights, names, "loss_weights") if not (
            len(names) == 1 and isinstance(loss_weights, (list, tuple))) else list(loss_weights)
        if weights is None or len(weights) != len(names):
            raise ValueError(f"`loss_weights` must be a float, or a list or dict with one weight per output "
                             f"{names}; got loss_weights={loss_weights!r}")
    return [CompiledOutput(i, name, losses_mod.resolve_loss(l) if l is not None else None,
                           None if w is None else float(w))
            for i, (name, l, w) in enumerate(zip(names, losses, weights))]


def _resolve_metrics(metrics, weighted_metrics, outputs, model):
    """MetricEntry per metric, named as Keras 3's CompileMetrics names them: ``<output>_<metric>``
    with several outputs; a weighted metric whose name is taken gets ``weighted_`` before the
    metric's name; a name taken again gets ``_<count>`` after it."""
    names = [o.name for o in outputs]
    shapes = _output_shapes(model)
    taken, entries = {}, []
    for weighted, argument, given in ((False, "metrics", metrics), (True, "weighted_metrics", weighted_metrics)):
        if given is None or (isinstance(given, (list, tuple, dict)) and not given):
            continue
        if isinstance(given, str):  # tf.keras 2 accepts one metric name as it is
            given = [given]
        if not isinstance(given, (list, tuple, dict)):
            given = [given]
        if len(outputs) == 1:
            if isinstance(given, dict):
                raise ValueError(f"`{argument}` as a dict needs a model with several outputs; this model has one")
            per_output = [list(given)]
        else:
            per_output = _per_output(given, names, argument)
        for output, ms in zip(outputs, per_output):
            if ms is None:
                continue
            for m in (ms if isinstance(ms, (list, tuple)) else [ms]):
                if m is None:
                    raise ValueError(f"`{argument}` for output {output.name!r}: expected a metric, got None")
                metric = metrics_mod.resolve_metric(m, output.loss, y_pred_shape=None if shapes is None
                                                    else shapes[output.index])
                prefix = f"{output.name}_" if len(outputs) > 1 else ""
                name = prefix + metric.name
                if name in taken:
                    if weighted:
                        name = f"{prefix}weighted_{metric.name}"
                    if name in taken:
                        taken[name] += 1
                        name = f"{name}_{taken[name] - 1}"
                taken.setdefault(name, 1)
                entries.append(MetricEntry(name, metric, output.index, weighted))
    return entries


def compile_model(model, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                  run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True, target="cpu",
                  fuse=True):
    """Model.compile as Keras 3 reads its arguments (``metrics`` may also be one name, as tf.keras 2
    accepts it); ``steps_per_execution``, ``jit_compile`` and ``auto_scale_loss`` are accepted and
    have nothing to change here (every step is one native call of generated code)."""
    from . import optimizers
    if target not in ("cpu", "cuda"):
        raise ValueError(f"compile: unknown target {target!r}; expected 'cpu' or 'cuda'")
    if loss_weights is not None and not isinstance(loss_weights, (list, tuple, dict, int, float)):
        raise ValueError(f"Expected `loss_weights` argument to be a float (single output case) or a list or "
                         f"dict, received loss_weights={loss_weights!r} of type {type(loss_weights).__name__}")
    model.optimizer = optimizers.get(optimizer)
    names = output_names(model)
    outputs = _resolve_losses(loss, loss_weights, names) if loss is not None else \
        [CompiledOutput(i, name, None, None) for i, name in enumerate(names)]
    entries = _resolve_metrics(metrics, weighted_metrics, outputs, model)
    model.compiled_outputs = outputs
    model.compiled_loss = outputs[0].loss if len(outputs) == 1 else (
        tuple(o.loss for o in outputs) if loss is not None else None)
    model.compiled_metric_entries = entries
    model.compiled_metric_fns = [(e.log_name, None if e.weighted else batch_metric_fn(e.metric)) for e in entries]
    model.compiled_metric_objects = [e.metric for e in entries]
    # as given: what compile_config records
    model.compiled_metrics = [metrics] if isinstance(metrics, str) else (metrics if metrics is not None else [])
    model.compiled_loss_weights = loss_weights
    model.compiled_weighted_metrics = weighted_metrics
    model.run_eagerly = bool(run_eagerly)
    model.compile_target = target
    model.compile_fuse = fuse
    model.compile_distribution = distribution_mod.distribution()  # what a tf.distribute-style scope set
    if model.compile_distribution is not None:
        model.compile_distribution.check_model(model)
    model.compiled = True


def check_class_ids(model, y, output_index=None):
    """Raises ValueError if ``y`` (the labels of ``model``'s sparse categorical crossentropy, as
    given: ints or floats, which are truncated to ids) holds a class id outside [0, num_classes)
    other than the loss's ``ignore_class``, as TensorFlow does on the CPU. The compiled loss
    compares ids with each class (a one-hot row), so an id outside the classes would silently
    count as a loss of 0. One min and one max: the callers check whole label arrays, once.
    ``output_index``: the output these labels belong to (models with several outputs)."""
    outputs = getattr(model, "compiled_outputs", None)
    if outputs and len(outputs) > 1:
        if output_index is None:
            return
        loss = outputs[output_index].loss
    else:
        loss = getattr(model, "compiled_loss", None)
    if getattr(loss, "fn", None) is not losses_mod.sparse_categorical_crossentropy or y.size == 0:
        return
    output_shape = _output_shape(model)
    if isinstance(output_shape, list):
        output_shape = output_shape[output_index or 0]
    if output_shape[-1] is None:
        return
    num_classes = output_shape[-1]
    ignore_class = loss._fn_kwargs.get("ignore_class")
    ids = y if ignore_class is None else y[y != ignore_class]
    if ids.size == 0:
        return
    lo, hi = ids.min().item(), ids.max().item()
    if not lo > -1:  # negated comparisons, so that NaN fails them; -0.5 truncates to the id 0
        bad = lo
    elif not hi < num_classes:
        bad = hi
    else:
        return
    raise ValueError(f"model '{model.name}': received a label value of {bad!r} which is outside the valid range "
                     f"of [0, {num_classes}): loss {loss.name!r} takes class ids and the model's output has "
                     f"{num_classes} classes")


def _output_shape(model):
    """``model.output_shape``. A subclassed model traces its call for it, which costs more than
    a small training step (train_on_batch checks each batch's labels): the shape is kept on the
    model for the input shape it was built with."""
    if getattr(model, "_is_functional", False) or getattr(model, "outputs", None):  # Sequential, functional
        return model.output_shape
    key = repr(model._build_input_shape)
    cached = getattr(model, "_output_shape_for_input", None)
    if cached is None or cached[0] != key:
        model._output_shape_for_input = cached = (key, model.output_shape)
    return cached[1]
