"""Keras's fit / evaluate / predict loops, run on compiled programs.

A training batch is ONE native call (``Program.train_step``: forward, loss, backward and
update); an evaluation batch one call of the inference-mode test step; a prediction batch
one call of ``Program.predict`` (keras/steps.py). Per batch the loop slices the data,
makes that call and drives the callbacks: nothing here grows with the model. Each batch
size (the last, partial batch included) gets its own specialisation, computed exactly.

The numbers are Keras 3's: the logs passed to ``on_train_batch_end`` are running means over
the epoch so far (each batch's loss and metric values weighted by its number of samples,
which is what Keras's Mean trackers compute for the loss and for mean-of-samples metrics);
History holds the epoch means; evaluate averages over samples exactly; validation_split
takes the last fraction of the data before shuffling; shuffling draws from the generator
``keras.utils.set_random_seed`` seeds. ``max_queue_size``/``workers``/``use_multiprocessing``
are accepted for tf.keras 2 compatibility and unused (the data are arrays in memory).
"""
import math
import numbers
import warnings

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType, fmt_shape
from ..runtime.data import as_numbers, to_array
from . import backend
from .callbacks.callback_list import CallbackList
from .training import batch_metric_fn, check_class_ids, reset_stateful_metrics

from .steps import feeds_by_name, model_steps

# ---- data ------------------------------------------------------------------------------------

def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _input_specs(model, x):
    try:
        return list(model.input_types())
    except ValueError:  # a subclassed model not built yet: its input shape comes from the data
        shapes = [(None,) + tuple(np.shape(a))[1:] for a in _as_list(x)]
        model.build(shapes if isinstance(x, (list, tuple)) else shapes[0])
        return list(model.input_types())


def input_arrays(model, x):
    """The model's inputs as a list of arrays of its input dtypes, shapes checked once."""
    if x is None:
        raise ValueError(f"model '{model.name}': no input data (x is None)")
    specs = _input_specs(model, x)
    xs = _as_list(x)
    if len(xs) != len(specs):
        raise ShapeError(f"model '{model.name}' takes {len(specs)} inputs, got {len(xs)}")
    out = []
    for a, (name, t) in zip(xs, specs):
        a = to_array(a, dtype=t.dtype, what=f"model '{model.name}', input {name!r}")  # range-checked when narrowed
        if a.ndim != len(t.shape) or any(d is not None and d != e for d, e in zip(t.shape[1:], a.shape[1:])):
            raise ShapeError(f"model '{model.name}' expects input {name!r} of shape {fmt_shape(t.shape)}, "
                             f"got {fmt_shape(a.shape)}")
        out.append(a)
    return out


def _sparse_labels(model):
    from ..passes.training import default_label_type
    loss = getattr(model, "compiled_loss", None)
    return default_label_type(model, loss, TensorType((None, 2), "float32")).dtype == "int32"


def label_array(model, y, n):
    if y is None:
        raise ValueError(f"model '{model.name}': no labels (y is None); fit and evaluate take arrays x and y")
    what = f"model '{model.name}', labels"
    if _sparse_labels(model):  # class ids, which Keras also accepts as floats or int64
        y = as_numbers(y, what=what)
        check_class_ids(model, y)  # before narrowing to int32, so that the message shows the value given
        y = to_array(y, dtype=np.int32, what=what)
    else:
        y = to_array(y, dtype=np.float32, what=what)  # Keras's losses cast labels to the predictions' dtype
    if len(y) != n:
        raise ShapeError(f"model '{model.name}': {len(y)} labels for {n} input samples")
    return y


def weight_array(sample_weight, n):
    if sample_weight is None:
        return None
    w = to_array(sample_weight, dtype=np.float32, what="sample_weight")
    if w.size != n or (w.ndim > 1 and w.shape[0] != n):
        raise ShapeError(f"sample_weight: expected one weight per sample, shape ({n},), got {fmt_shape(w.shape)}")
    return np.ascontiguousarray(w.reshape(n))


def class_weight_array(y, class_weight):
    """Keras: each sample's weight is its class's (one-hot labels: argmax; missing classes: 1)."""
    labels = np.asarray(y)
    if labels.ndim > 1:
        labels = np.argmax(labels, axis=-1) if labels.shape[-1] != 1 else np.squeeze(labels, -1)
    labels = np.round(labels).astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in labels], dtype=np.float32)


def _take(arrays, index):
    return [a[index] for a in arrays]


def _unpack(data):
    """validation_data: (x, y) or (x, y, sample_weight) (a list counts as a tuple)."""
    data = tuple(data) if isinstance(data, list) else data
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight), "
                         f"got {type(data).__name__}")
    return data if len(data) == 3 else data + (None,)


class Batches:
    """Batch indices for array data, as Keras 3's epoch iterator yields them: in order, or
    reshuffled at each pass over the data; with ``steps_per_epoch`` a pass may span epochs,
    and an epoch ends early (with Keras's warning) when the data run out."""

    def __init__(self, n, batch_size, shuffle=False, steps_per_epoch=None):
        if n == 0:
            raise ValueError("no data: the input arrays have 0 samples")
        self.n, self.batch_size, self.shuffle = n, int(batch_size), shuffle
        self.num_batches = math.ceil(n / self.batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.steps = steps_per_epoch or self.num_batches
        self._order = None  # this pass's batches
        self._next = 0

    def _new_pass(self):
        starts = range(0, self.n, self.batch_size)
        if self.shuffle == "batch":
            perm = backend.rng().permutation(self.num_batches)
            self._order = [slice(starts[i], starts[i] + self.batch_size) for i in perm]
        elif self.shuffle:
            perm = backend.rng().permutation(self.n)
            self._order = [perm[s:s + self.batch_size] for s in starts]
        else:
            self._order = [slice(s, s + self.batch_size) for s in starts]
        self._next = 0

    def epoch(self):
        """Yields (step, index) for one epoch."""
        if self._order is None or self.steps_per_epoch is None:
            self._new_pass()
        for step in range(self.steps):
            if self._next >= self.num_batches:
                if self.steps_per_epoch:
                    warnings.warn("Your input ran out of data; interrupting training. Make sure that your dataset "
                                  "or generator can generate at least `steps_per_epoch * epochs` batches.",
                                  stacklevel=3)
                break
            index = self._order[self._next]
            self._next += 1
            yield step, index
        if self._next >= self.num_batches:
            self._order = None


class RunningMeans:
    """The epoch-so-far means of each step's values, weighted by batch size. Metrics that keep
    state across batches (``stateful``: Precision, Recall, ...) already report their value over
    the epoch so far: their latest value is taken as it is."""

    def __init__(self, stateful=()):
        self.totals = None
        self.count = 0
        self.stateful = set(stateful)

    def add(self, values, n):
        if self.totals is None:
            self.totals = dict.fromkeys(values, 0.0)
        self.count += n
        for k, v in values.items():
            self.totals[k] = v if k in self.stateful else self.totals[k] + v * n
        return {k: t if k in self.stateful else t / self.count for k, t in self.totals.items()}


def _stateful_metric_names(model):
    """Names of the compiled metrics that accumulate state over an epoch; resets their state."""
    reset_stateful_metrics(model)
    return [m.name for m in getattr(model, "compiled_metric_objects", []) if batch_metric_fn(m) is None]


def _check_batch_size(value, name="batch_size"):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0):
        raise ValueError(f"`{name}` must be a positive integer (or None for the default), got {name}={value!r}")


def _check_validation_split(value):
    if value is not None and not 0 <= value < 1:  # written so that NaN fails too
        raise ValueError(f"`validation_split` must be a fraction in [0, 1) of the data to hold out for validation, "
                         f"got validation_split={value!r}")


def _check_compiled(model, method):
    if not getattr(model, "compiled", False):
        raise ValueError(f"You must call `compile()` before calling `{method}()` on model '{model.name}'.")


def _verbosity(verbose):
    return 1 if verbose == "auto" else int(verbose)


def _flatten(logs):
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


def _should_eval(epoch, validation_freq):
    epoch += 1
    if isinstance(validation_freq, int):
        return epoch % validation_freq == 0
    if isinstance(validation_freq, (list, tuple, set)):
        return epoch in validation_freq
    raise ValueError(f"Expected `validation_freq` to be a list or int. Received: validation_freq={validation_freq}")


# ---- the loops -------------------------------------------------------------------------------

def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
        validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
        steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
        max_queue_size=10, workers=1, use_multiprocessing=False):
    _check_compiled(model, "fit")
    _check_batch_size(batch_size)
    _check_batch_size(validation_batch_size, "validation_batch_size")
    _check_validation_split(validation_split)
    verbose = _verbosity(verbose)
    xs = input_arrays(model, x)
    n = len(xs[0])
    y = label_array(model, y, n)
    sample_weight = weight_array(sample_weight, n)
    if validation_split and validation_data is None:
        split_at = int(math.floor(n * (1.0 - validation_split)))
        if split_at == 0 or split_at == n:
            raise ValueError(f"Training data contains {n} samples, which is not sufficient to split it into a "
                             f"validation and training set as specified by `validation_split={validation_split}`. "
                             "Either provide more data, or a different value for the `validation_split` argument.")
        validation = (_take(xs, slice(split_at, n)), y[split_at:],
                      None if sample_weight is None else sample_weight[split_at:])
        xs, y = _take(xs, slice(0, split_at)), y[:split_at]
        sample_weight = None if sample_weight is None else sample_weight[:split_at]
        n = split_at
    elif validation_data is not None:
        val_x, val_y, val_w = _unpack(validation_data)
        val_xs = input_arrays(model, val_x)
        validation = (val_xs, label_array(model, val_y, len(val_xs[0])), weight_array(val_w, len(val_xs[0])))
    else:
        validation = None
    if class_weight is not None:
        if sample_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        sample_weight = class_weight_array(y, class_weight)
    if not batch_size:
        batch_size = math.ceil(n / steps_per_epoch) if steps_per_epoch else 32
    batches = Batches(n, batch_size, shuffle, steps_per_epoch)
    runner = model_steps(model)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=model,
                                 verbose=verbose, epochs=epochs, steps=batches.steps)
    model.stop_training = False
    callbacks.on_train_begin()
    training_logs = None
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        means, logs = RunningMeans(_stateful_metric_names(model)), {}
        for step, index in batches.epoch():
            callbacks.on_train_batch_begin(step)
            values = runner.train(_take(xs, index), y[index], None if sample_weight is None else sample_weight[index])
            logs = means.add(values, _size(index, len(y)))
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation is not None and _should_eval(epoch, validation_freq):
            val_logs = _evaluate_loop(model, runner, *validation, batch_size=validation_batch_size or batch_size,
                                      num_steps=validation_steps, callbacks=callbacks)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    callbacks.on_train_end(logs=training_logs)
    history = callbacks.history
    if history is not None:
        model.history = history
    return history


def _size(index, n):
    """The number of samples a batch index selects."""
    if isinstance(index, slice):
        return len(range(*index.indices(n)))
    return len(index)


def _evaluate_loop(model, runner, xs, y, sample_weight, batch_size, num_steps, callbacks):
    batches = Batches(len(y), batch_size or 32, shuffle=False, steps_per_epoch=num_steps)
    feeds = feeds_by_name(model, xs)
    names = list(feeds)
    callbacks.on_test_begin()
    means, logs = RunningMeans(_stateful_metric_names(model)), {}
    for step, index in batches.epoch():
        callbacks.on_test_batch_begin(step)
        values = runner.test({k: feeds[k][index] for k in names}, y[index],
                            None if sample_weight is None else sample_weight[index])
        logs = means.add(values, _size(index, len(y)))
        callbacks.on_test_batch_end(step, logs)
        if getattr(model, "stop_evaluating", False):
            break
    logs = dict(logs)
    callbacks.on_test_end(logs)
    return logs


def evaluate(model, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None, callbacks=None,
             max_queue_size=10, workers=1, use_multiprocessing=False, return_dict=False):
    _check_compiled(model, "evaluate")
    _check_batch_size(batch_size)
    verbose = _verbosity(verbose)
    xs = input_arrays(model, x)
    n = len(xs[0])
    y = label_array(model, y, n)
    sample_weight = weight_array(sample_weight, n)
    if not batch_size:
        batch_size = math.ceil(n / steps) if steps else 32
    num_steps = steps or math.ceil(n / batch_size)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
                                 steps=num_steps)
    model.stop_evaluating = False
    logs = _evaluate_loop(model, model_steps(model), xs, y, sample_weight, batch_size, steps, callbacks)
    return logs if return_dict else _flatten(logs)


def predict(model, x, batch_size=None, verbose="auto", steps=None, callbacks=None, max_queue_size=10, workers=1,
            use_multiprocessing=False):
    _check_batch_size(batch_size)
    verbose = _verbosity(verbose)
    xs = input_arrays(model, x)
    n = len(xs[0])
    if not batch_size:
        batch_size = math.ceil(n / steps) if steps else 32
    batches = Batches(n, batch_size, shuffle=False, steps_per_epoch=steps)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
                                 steps=batches.steps)
    runner = model_steps(model)
    callbacks.on_predict_begin()
    outputs = []
    for step, index in batches.epoch():
        callbacks.on_predict_batch_begin(step)
        out = runner.predict(_take(xs, index))
        outputs.append(out)
        callbacks.on_predict_batch_end(step, {"outputs": out})
    callbacks.on_predict_end()
    if isinstance(outputs[0], list):
        return [np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0]))]
    return np.concatenate(outputs)


def train_on_batch(model, x, y=None, sample_weight=None, class_weight=None, reset_metrics=True, return_dict=False):
    """One training step on this batch; returns its loss and metrics (Keras 3 resets the metrics
    first, so these are this batch's values).

    A batch like the last one (the same steps, one input array and a label array of the same
    shapes and dtypes, which the checks below passed unconverted, no weights) goes straight to
    the compiled step: W1's step is ~9 us, and these checks had cost twice that. Labels that
    are class ids are still range-checked (one min and max), so every batch gets the same
    message."""
    seen = model.__dict__.get("_train_batch_seen")
    if seen is not None and sample_weight is None and class_weight is None and type(x) is np.ndarray \
            and type(y) is np.ndarray and x.shape == seen[1] and y.shape == seen[3] and x.dtype == seen[2] \
            and y.dtype == seen[4] and x.flags.c_contiguous and y.flags.c_contiguous \
            and model_steps(model) is seen[0]:
        if seen[5]:
            check_class_ids(model, y)
        logs = _step_after_reset(model, reset_metrics, lambda: seen[0].train([x], y, None))
        return logs if return_dict else _flatten(logs)
    _check_compiled(model, "train_on_batch")
    xs = input_arrays(model, x)
    labels = y
    y = label_array(model, y, len(xs[0]))
    if len(xs) == 1 and xs[0] is x and y is labels and type(x) is np.ndarray and type(y) is np.ndarray \
            and sample_weight is None and class_weight is None:
        model._train_batch_seen = (model_steps(model), x.shape, x.dtype, y.shape, y.dtype, _sparse_labels(model))
    sample_weight = weight_array(sample_weight, len(y))
    if class_weight is not None:
        if sample_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        sample_weight = class_weight_array(y, class_weight)
    logs = _step_after_reset(model, reset_metrics, lambda: model_steps(model).train(xs, y, sample_weight))
    return logs if return_dict else _flatten(logs)


def test_on_batch(model, x, y=None, sample_weight=None, reset_metrics=True, return_dict=False):
    _check_compiled(model, "test_on_batch")
    xs = input_arrays(model, x)
    y = label_array(model, y, len(xs[0]))
    logs = _step_after_reset(model, reset_metrics, lambda: model_steps(model).test(
        feeds_by_name(model, xs), y, weight_array(sample_weight, len(y))))
    return logs if return_dict else _flatten(logs)


def _step_after_reset(model, reset_metrics, step):
    """Run ``step`` after resetting the stateful metrics (with ``reset_metrics``); a step that
    raises puts their state back, so that a failed step changes nothing."""
    metrics = getattr(model, "compiled_metric_objects", None)
    if not reset_metrics or not metrics:
        return step()
    saved = [(v, np.array(v.numpy())) for m in metrics for v in m.variables]
    reset_stateful_metrics(model)
    try:
        return step()
    except BaseException:
        for variable, value in saved:
            variable.assign(value)
        raise


def predict_on_batch(model, x):
    return model_steps(model).predict(input_arrays(model, x))


def save_weights(model, filepath, overwrite=True, save_format=None, options=None):
    from .callbacks.model_checkpoint import save_weights as save
    save(model, filepath, overwrite=overwrite)


def load_weights(model, filepath, skip_mismatch=False, by_name=False, options=None):
    from .callbacks.model_checkpoint import load_weights as load
    if by_name:
        raise NotImplementedError("load_weights(by_name=True) is not supported; weights load by structure")
    load(model, filepath, skip_mismatch=skip_mismatch)
