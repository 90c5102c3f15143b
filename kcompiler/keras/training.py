"""Model.compile: resolving the optimizer, the loss and the metrics as Keras does.

The compiled training step computes each metric's value over the batch in generated
code (the mean of the metric's per-sample function); the runtime averages batch
values over the epoch as Keras's running means do.
"""
from . import losses as losses_mod, metrics as metrics_mod


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
    model.compiled = True
