"""Model.compile: resolving the optimizer, the loss and the metrics as Keras does.

The compiled training step computes each metric's batch value in generated code from
a per-sample function written with keras.ops; the runtime averages them over the epoch.
"""
from . import losses as losses_mod, ops


def _sparse(loss):
    name = type(loss).__name__.lower() + getattr(getattr(loss, "fn", None), "__name__", "")
    return "sparse" in name


def _binary(loss):
    name = type(loss).__name__.lower() + getattr(getattr(loss, "fn", None), "__name__", "")
    return "binary" in name


def binary_accuracy(y_true, y_pred, threshold=0.5):
    return ops.cast(ops.equal(ops.cast(y_true, "float32"),
                              ops.cast(ops.greater(y_pred, threshold), "float32")), "float32")


def categorical_accuracy(y_true, y_pred):
    return ops.cast(ops.equal(ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1)), "float32")


def sparse_categorical_accuracy(y_true, y_pred):
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape):
        labels = ops.squeeze(labels, axis=-1)
    return ops.cast(ops.equal(labels, ops.argmax(y_pred, axis=-1)), "float32")


def accuracy(y_true, y_pred):
    return ops.cast(ops.equal(y_true, y_pred), "float32")


def mean_absolute_error(y_true, y_pred):
    return ops.mean(ops.abs(ops.subtract(y_pred, ops.cast(y_true, y_pred.dtype))), axis=-1)


def mean_squared_error(y_true, y_pred):
    return ops.mean(ops.square(ops.subtract(y_pred, ops.cast(y_true, y_pred.dtype))), axis=-1)


METRIC_FUNCTIONS = {
    "binary_accuracy": binary_accuracy, "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "mae": mean_absolute_error, "mean_absolute_error": mean_absolute_error,
    "mse": mean_squared_error, "mean_squared_error": mean_squared_error,
}


def resolve_metric(identifier, loss):
    """(display name, per-sample function) for a compile() metric, as Keras resolves it:
    'accuracy'/'acc' becomes binary, categorical or sparse accuracy from the loss."""
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            fn = (sparse_categorical_accuracy if _sparse(loss) else
                  binary_accuracy if _binary(loss) else categorical_accuracy)
            return identifier, fn
        if identifier not in METRIC_FUNCTIONS:
            raise ValueError(f"unknown metric {identifier!r}; expected one of "
                             f"{sorted(METRIC_FUNCTIONS) + ['accuracy']}")
        return identifier, METRIC_FUNCTIONS[identifier]
    fn = getattr(identifier, "fn", None) or getattr(identifier, "_fn", None)
    if fn is not None:  # a Keras-style mean metric object wrapping a function
        return getattr(identifier, "name", fn.__name__), fn
    if callable(identifier) and not hasattr(identifier, "update_state"):
        return getattr(identifier, "__name__", "metric"), identifier
    raise NotImplementedError(f"metric {identifier!r} cannot be computed inside the compiled step yet")


def compile_model(model, optimizer="rmsprop", loss=None, metrics=None, run_eagerly=False, target="cpu",
                  fuse=True, **kwargs):
    from . import optimizers
    if target not in ("cpu", "cuda"):
        raise ValueError(f"compile: unknown target {target!r}; expected 'cpu' or 'cuda'")
    model.optimizer = optimizers.get(optimizer)
    model.compiled_loss = losses_mod.resolve_loss(loss) if loss is not None else None
    model.compiled_metric_fns = [resolve_metric(m, model.compiled_loss) for m in (metrics or [])]
    model.compiled_metrics = list(metrics or [])
    model.run_eagerly = bool(run_eagerly)
    model.compile_target = target
    model.compile_fuse = fuse
    model.compiled = True
    model._programs = {}
