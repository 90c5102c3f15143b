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


def reset_stateful_metrics(model):
    """Zero the state of the compiled metrics that accumulate over an epoch (in place, so compiled
    steps holding their buffers see it)."""
    for metric in getattr(model, "compiled_metric_objects", []):
        if batch_metric_fn(metric) is None:
            metric.reset_state()


def compile_model(model, optimizer="rmsprop", loss=None, metrics=None, run_eagerly=False, target="cpu",
                  fuse=True, **kwargs):
    from . import optimizers
    if target not in ("cpu", "cuda"):
        raise ValueError(f"compile: unknown target {target!r}; expected 'cpu' or 'cuda'")
    model.optimizer = optimizers.get(optimizer)
    model.compiled_loss = losses_mod.resolve_loss(loss) if loss is not None else None
    resolved = [metrics_mod.resolve_metric(m, model.compiled_loss) for m in (metrics or [])]
    model.compiled_metric_fns = [(m.name, batch_metric_fn(m)) for m in resolved]
    model.compiled_metric_objects = resolved
    model.compiled_metrics = list(metrics or [])  # as given: what compile_config records
    model.run_eagerly = bool(run_eagerly)
    model.compile_target = target
    model.compile_fuse = fuse
    model.compile_distribution = distribution_mod.distribution()  # what a tf.distribute-style scope set
    if model.compile_distribution is not None:
        model.compile_distribution.check_model(model)
    model.compiled = True


def check_class_ids(model, y):
    """Raises ValueError if ``y`` (the labels of ``model``'s sparse categorical crossentropy, as
    given: ints or floats, which are truncated to ids) holds a class id outside [0, num_classes)
    other than the loss's ``ignore_class``, as TensorFlow does on the CPU. The compiled loss
    compares ids with each class (a one-hot row), so an id outside the classes would silently
    count as a loss of 0. One min and one max: the callers check whole label arrays, once."""
    loss = getattr(model, "compiled_loss", None)
    if getattr(loss, "fn", None) is not losses_mod.sparse_categorical_crossentropy or y.size == 0:
        return
    output_shape = _output_shape(model)
    if isinstance(output_shape, list) or output_shape[-1] is None:  # several outputs: the step itself refuses them
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
