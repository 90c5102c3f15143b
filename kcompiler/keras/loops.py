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
``keras.utils.set_random_seed`` seeds. The data come batch by batch from an adapter
(keras/data_adapters.py: arrays, generators, Sequence/PyDataset; ``max_queue_size``/
``workers``/``use_multiprocessing`` say how generators and Sequences are prefetched). A model
with several outputs takes a list (or dict by output name) of label arrays; its logs hold
each output's loss as ``<output>_loss`` and its metrics as ``<output>_<metric>``.
"""
import math
import numbers
import warnings

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType, fmt_shape
from ..runtime.data import as_numbers, to_array
from . import data_adapters
from .callbacks.callback_list import CallbackList
from .training import check_class_ids, reset_stateful_metrics, stateful_metric_entries

from .distribution import model_distribution
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
    """The model's inputs as a list of arrays of its input dtypes, shapes checked once: from an
    array, a list of one per input, or a dict keyed by input name."""
    if x is None:
        raise ValueError(f"model '{model.name}': no input data (x is None)")
    specs = _input_specs(model, x)
    if isinstance(x, dict):  # by input name, as Keras takes several inputs
        names = [name for name, _ in specs]
        if sorted(x) != sorted(names):
            raise ValueError(f"model '{model.name}': inputs given as a dict need the keys {names} (the names of "
                             f"its inputs), got {sorted(x)}")
        x = [x[name] for name in names]
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


def _sparse_labels(model, output_index=0):
    from ..passes.training import default_label_type
    outputs = getattr(model, "compiled_outputs", None)
    loss = outputs[output_index].loss if outputs else getattr(model, "compiled_loss", None)
    return default_label_type(model, loss, TensorType((None, 2), "float32")).dtype == "int32"


def label_array(model, y, n, output_index=None):
    """One output's labels as an array: class ids (int32, range-checked) for a sparse loss, else
    float32. ``output_index``: which output of several."""
    if y is None:
        raise ValueError(f"model '{model.name}': no labels (y is None); fit and evaluate take arrays x and y")
    what = f"model '{model.name}', labels" + ("" if output_index is None else f" of output {output_index}")
    if _sparse_labels(model, output_index or 0):  # class ids, which Keras also accepts as floats or int64
        y = as_numbers(y, what=what)
        check_class_ids(model, y, output_index)  # before narrowing to int32, so that the message shows the value
        y = to_array(y, dtype=np.int32, what=what)
    else:
        y = to_array(y, dtype=np.float32, what=what)  # Keras's losses cast labels to the predictions' dtype
    if len(y) != n:
        raise ShapeError(f"model '{model.name}': {len(y)} labels for {n} input samples")
    return y


def label_arrays(model, y, n):
    """The labels the compiled step takes: one array for a single-output model; for several
    outputs, a list of one array per labelled output (``label_names``), from a list of one per
    output (or per labelled output) or a dict keyed by output name."""
    from ..passes.training import label_names
    names = label_names(model)
    if names == ["y"]:
        if isinstance(y, dict) and len(y) == 1:
            y = next(iter(y.values()))
        return label_array(model, y, n)
    outputs = model.compiled_outputs
    indices = [int(name[2:]) for name in names]
    if y is None:
        raise ValueError(f"model '{model.name}': no labels (y is None); fit and evaluate take arrays x and y")
    if isinstance(y, dict):
        missing = [outputs[i].name for i in indices if outputs[i].name not in y]
        unknown = [k for k in y if k not in [o.name for o in outputs]]
        if missing or unknown:
            raise ValueError(f"model '{model.name}': labels given as a dict need the keys {[o.name for o in outputs]}"
                             f" (outputs with a loss or metrics: {[outputs[i].name for i in indices]}); "
                             f"missing {missing}, unknown {unknown}")
        given = [y[outputs[i].name] for i in indices]
    elif isinstance(y, (list, tuple)) and len(y) == len(outputs):
        given = [y[i] for i in indices]
    elif isinstance(y, (list, tuple)) and len(y) == len(indices):
        given = list(y)
    else:
        raise ValueError(f"model '{model.name}' has {len(outputs)} outputs {[o.name for o in outputs]}: give "
                         f"its labels as a list of one array per output or a dict keyed by output name, got "
                         f"{type(y).__name__}" + (f" of {len(y)} arrays" if isinstance(y, (list, tuple)) else ""))
    return [label_array(model, a, n, i) for a, i in zip(given, indices)]


def weight_array(sample_weight, n):
    if sample_weight is None:
        return None
    w = to_array(sample_weight, dtype=np.float32, what="sample_weight")
    if w.size != n or (w.ndim > 1 and w.shape[0] != n):
        raise ShapeError(f"sample_weight: expected one weight per sample, shape ({n},), got {fmt_shape(w.shape)}")
    return np.ascontiguousarray(w.reshape(n))


def weight_arrays(model, sample_weight, n):
    """The sample weights the compiled step takes: one array (or None) that weighs every output;
    for a model with several outputs also a list of one per output (or per labelled output) or a
    dict by output name, whose entries may be None (weights of 1)."""
    from ..passes.training import label_names
    names = label_names(model)
    per_output = isinstance(sample_weight, dict) or (
        names != ["y"] and isinstance(sample_weight, (list, tuple)) and len(sample_weight) > 0
        and all(w is None or np.ndim(w) >= 1 for w in sample_weight))
    if not per_output:
        return weight_array(sample_weight, n)
    outputs = model.compiled_outputs
    indices = [int(name[2:]) for name in names]
    if isinstance(sample_weight, dict):
        unknown = [k for k in sample_weight if k not in [o.name for o in outputs]]
        if unknown:
            raise ValueError(f"model '{model.name}': sample_weight keys {unknown} name no output; its outputs are "
                             f"{[o.name for o in outputs]}")
        given = [sample_weight.get(outputs[i].name) for i in indices]
    elif len(sample_weight) == len(outputs):
        given = [sample_weight[i] for i in indices]
    elif len(sample_weight) == len(indices):
        given = list(sample_weight)
    else:
        raise ValueError(f"model '{model.name}' has {len(outputs)} outputs {[o.name for o in outputs]}: give "
                         f"sample_weight as one array for all, or one per output; got {len(sample_weight)} arrays")
    return [weight_array(w, n) for w in given]


def class_weight_array(y, class_weight):
    """Keras: each sample's weight is its class's (one-hot labels: argmax; missing classes: 1)."""
    if isinstance(y, list):
        raise ValueError("`class_weight` is only supported for models with a single output.")
    labels = np.asarray(y)
    if labels.ndim > 1:
        labels = np.argmax(labels, axis=-1) if labels.shape[-1] != 1 else np.squeeze(labels, -1)
    labels = np.round(labels).astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in labels], dtype=np.float32)


def _unpack(data):
    """validation_data: (x, y) or (x, y, sample_weight) (a list counts as a tuple)."""
    data = tuple(data) if isinstance(data, list) else data
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight), "
                         "a generator or a keras.utils.Sequence/PyDataset, "
                         f"got {type(data).__name__}")
    return data if len(data) == 3 else data + (None,)


def _is_streamed(x):
    return data_adapters.is_sequence(x) or data_adapters.is_generator(x)


def _check_streamed(x, y, sample_weight, method):
    if y is not None:
        raise ValueError(f"`y` argument is not supported when using a generator or a keras.utils.Sequence/"
                         f"PyDataset as input to {method}(): the batches hold the labels; "
                         f"received y={type(y).__name__}")
    if sample_weight is not None:
        raise ValueError(f"`sample_weight` argument is not supported when using a generator or a keras.utils."
                         f"Sequence/PyDataset as input to {method}(): the batches hold the sample weights")


def _streamed_adapter(x, steps, shuffle, workers, use_multiprocessing, max_queue_size, distribution=None):
    """A Sequence/PyDataset (``shuffle``: its batches in a new order each epoch) or a generator
    (whose batches come in its own order: ``shuffle`` is ignored, with Keras 3's warning).
    Under a data-parallel ``distribution`` each rank's batches are its own (``presharded``): a
    Sequence's batches rank, rank + ranks, ...; a generator's as it yields them (each rank's
    generator yields its own shard, docs/distributed.md)."""
    if data_adapters.is_sequence(x):
        if distribution is not None and distribution.world_size > 1:
            x = distribution.shard_source(x)
        adapter = data_adapters.SequenceAdapter(x, steps, shuffle, workers, use_multiprocessing, max_queue_size)
    else:
        if shuffle:
            warnings.warn("`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
                          "generator. The generator is expected to yield already-shuffled data.", stacklevel=4)
        adapter = data_adapters.GeneratorAdapter(x, steps, workers, use_multiprocessing, max_queue_size)
    adapter.presharded = distribution is not None and distribution.world_size > 1
    return adapter


def _array_data(model, x, y, sample_weight, labelled=True):
    """(xs, labels, sample weights) as arrays, checked once."""
    xs = input_arrays(model, x)
    n = len(xs[0])
    return xs, label_arrays(model, y, n) if labelled else None, weight_arrays(model, sample_weight, n)


def _batch_arrays(model, adapter, batch, labelled=True, class_weight=None):
    """One batch from ``adapter`` as the step takes it: (xs, labels, sample weights, size); the
    batches of a generator or Sequence are converted and checked here, one by one."""
    x, y, w = batch
    if adapter.converted:
        xs = x
    else:
        xs = input_arrays(model, x)
        if labelled:
            if y is None:
                raise ValueError(f"model '{model.name}': the batches of the generator or Sequence hold no labels; "
                                 "they must be (x, y) or (x, y, sample_weight) tuples")
            y = label_arrays(model, y, len(xs[0]))
        w = weight_arrays(model, w, len(xs[0]))
    if labelled and class_weight is not None:
        if w is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        w = class_weight_array(y, class_weight)
    return xs, y, w, len(xs[0])


class RunningMeans:
    """The epoch-so-far means of each step's values, weighted by batch size. Metrics that keep
    state across batches (``stateful``: Precision, Recall, ...) already report their value over
    the epoch so far: their latest value is taken as it is. The losses of the single outputs of
    a model with several (``per_batch``) are plain means over the batches, as Keras 3's
    per-output loss trackers compute them (a partial batch counts as much as a full one)."""

    def __init__(self, stateful=(), per_batch=()):
        self.totals = None
        self.count = 0
        self.batches = 0
        self.stateful = set(stateful)
        self.per_batch = set(per_batch)

    def add(self, values, n):
        if self.totals is None:
            self.totals = dict.fromkeys(values, 0.0)
        self.count += n
        self.batches += 1
        for k, v in values.items():
            if k in self.stateful:
                self.totals[k] = v
            else:
                self.totals[k] += v if k in self.per_batch else v * n
        return {k: t if k in self.stateful else t / (self.batches if k in self.per_batch else self.count)
                for k, t in self.totals.items()}

def _epoch_means(model):
    """The running means of one epoch of ``model``'s logs; resets the state of its compiled
    metrics that accumulate over an epoch."""
    reset_stateful_metrics(model)
    outputs = getattr(model, "compiled_outputs", None) or []
    per_output_losses = [f"{o.name}_loss" for o in outputs if o.loss is not None]
    per_output_losses = per_output_losses if len(per_output_losses) > 1 else []
    return RunningMeans([e.log_name for e in stateful_metric_entries(model)], per_output_losses), {}


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


def _flatten(logs, model):
    """The logs as Keras 3 returns them when ``return_dict`` is False: one value, or a list in
    the order of ``model.metrics`` (the loss, the compiled metrics by their own names, each
    output's loss), then the logs no such name matched (with several outputs: the metrics,
    named ``<output>_<metric>``), sorted by name."""
    if len(logs) == 1:  # the loss alone: no order to find (W1's train_on_batch, every call)
        return next(iter(logs.values()))
    outputs = getattr(model, "compiled_outputs", None) or []
    order = ["loss"] + [e.metric.name for e in getattr(model, "compiled_metric_entries", [])] + \
        [f"{o.name}_loss" for o in outputs if o.loss is not None]
    first = list(dict.fromkeys(name for name in order if name in logs))
    values = [logs[name] for name in first] + [logs[k] for k in sorted(logs) if k not in first]
    return values[0] if len(values) == 1 else values


def _should_eval(epoch, validation_freq):
    epoch += 1
    if isinstance(validation_freq, int):
        return epoch % validation_freq == 0
    if isinstance(validation_freq, (list, tuple, set)):
        return epoch in validation_freq
    raise ValueError(f"Expected `validation_freq` to be a list or int. Received: validation_freq={validation_freq}")


def _default_batch_size(batch_size, n, steps):
    return batch_size or (math.ceil(n / steps) if steps else 32)


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
    streaming = (workers, use_multiprocessing, max_queue_size)
    validation = None
    if _is_streamed(x):
        _check_streamed(x, y, sample_weight, "fit")
        if validation_split:
            raise ValueError("`validation_split` is only supported for arrays, not for a generator or a keras.utils."
                             "Sequence/PyDataset: pass `validation_data` instead")
        adapter = _streamed_adapter(x, steps_per_epoch, shuffle, *streaming, model_distribution(model))
    else:
        xs, y, sample_weight = _array_data(model, x, y, sample_weight)
        n = len(xs[0])
        if validation_split and validation_data is None:
            split_at = int(math.floor(n * (1.0 - validation_split)))
            if split_at == 0 or split_at == n:
                raise ValueError(f"Training data contains {n} samples, which is not sufficient to split it into a "
                                 f"validation and training set as specified by `validation_split={validation_split}`. "
                                 "Either provide more data, or a different value for the `validation_split` argument.")
            held_out, kept = slice(split_at, n), slice(0, split_at)
            validation = tuple(data_adapters.take(a, held_out) for a in (xs, y, sample_weight))
            xs, y, sample_weight = (data_adapters.take(a, kept) for a in (xs, y, sample_weight))
            n = split_at
        if class_weight is not None:
            if sample_weight is not None:
                raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
            sample_weight = class_weight_array(y, class_weight)
            class_weight = None  # applied once, to all the arrays
        batch_size = _default_batch_size(batch_size, n, steps_per_epoch)
        adapter = data_adapters.ArrayAdapter(xs, y, sample_weight, batch_size, shuffle, steps_per_epoch)
    if validation_data is not None:
        if _is_streamed(validation_data):
            validation = _streamed_adapter(validation_data, validation_steps, False, *streaming,
                                           model_distribution(model))
        else:
            val_x, val_y, val_w = _unpack(validation_data)
            validation = _array_data(model, val_x, val_y, val_w)
    if isinstance(validation, tuple):
        validation = data_adapters.ArrayAdapter(*validation, validation_batch_size or batch_size or 32,
                                                shuffle=False, steps_per_epoch=validation_steps)
    runner = model_steps(model)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=model,
                                 verbose=verbose, epochs=epochs, steps=adapter.steps)
    model.stop_training = False
    try:
        callbacks.on_train_begin()
        training_logs = None
        for epoch in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            means, logs = _epoch_means(model)
            for step, batch in adapter.epoch():
                callbacks.on_train_batch_begin(step)
                xs_b, y_b, w_b, size = _batch_arrays(model, adapter, batch, class_weight=class_weight)
                logs = runner.train(xs_b, y_b, w_b, adapter.presharded)
                logs = means.add(logs, runner.distribution.last_global_count if adapter.presharded else size)
                callbacks.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            adapter.on_epoch_end()
            if not logs:  # the data ran out before this epoch began (warned): training ends here
                break
            epoch_logs = dict(logs)
            if validation is not None and _should_eval(epoch, validation_freq):
                val_logs = _evaluate_loop(model, runner, validation, callbacks)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callbacks.on_epoch_end(epoch, epoch_logs)
            training_logs = epoch_logs
            if model.stop_training:
                break
        callbacks.on_train_end(logs=training_logs)
    finally:
        _close(adapter, validation)
    history = callbacks.history
    if history is not None:
        model.history = history
    return history


def _close(*adapters):
    for adapter in adapters:
        close = getattr(adapter, "close", None)
        if close is not None:
            close()


def _evaluate_loop(model, runner, adapter, callbacks):
    callbacks.on_test_begin()
    means, logs = _epoch_means(model)
    for step, batch in adapter.epoch():
        callbacks.on_test_batch_begin(step)
        xs, y, w, size = _batch_arrays(model, adapter, batch)
        logs = runner.test(feeds_by_name(model, xs), y, w, adapter.presharded)
        logs = means.add(logs, runner.distribution.last_global_count if adapter.presharded else size)
        callbacks.on_test_batch_end(step, logs)
        if getattr(model, "stop_evaluating", False):
            break
    adapter.on_epoch_end()
    logs = dict(logs)
    callbacks.on_test_end(logs)
    return logs


def evaluate(model, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None, callbacks=None,
             max_queue_size=10, workers=1, use_multiprocessing=False, return_dict=False):
    _check_compiled(model, "evaluate")
    _check_batch_size(batch_size)
    verbose = _verbosity(verbose)
    if _is_streamed(x):
        _check_streamed(x, y, sample_weight, "evaluate")
        adapter = _streamed_adapter(x, steps, False, workers, use_multiprocessing, max_queue_size,
                                    model_distribution(model))
    else:
        xs, y, sample_weight = _array_data(model, x, y, sample_weight)
        adapter = data_adapters.ArrayAdapter(xs, y, sample_weight, _default_batch_size(batch_size, len(xs[0]), steps),
                                             shuffle=False, steps_per_epoch=steps)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
                                 steps=adapter.steps)
    model.stop_evaluating = False
    try:
        logs = _evaluate_loop(model, model_steps(model), adapter, callbacks)
    finally:
        _close(adapter)
    return logs if return_dict else _flatten(logs, model)


def predict(model, x, batch_size=None, verbose="auto", steps=None, callbacks=None, max_queue_size=10, workers=1,
            use_multiprocessing=False):
    _check_batch_size(batch_size)
    verbose = _verbosity(verbose)
    if _is_streamed(x):
        adapter = _streamed_adapter(x, steps, False, workers, use_multiprocessing, max_queue_size)
    else:
        xs = input_arrays(model, x)
        adapter = data_adapters.ArrayAdapter(xs, None, None, _default_batch_size(batch_size, len(xs[0]), steps),
                                             shuffle=False, steps_per_epoch=steps)
    if not isinstance(callbacks, CallbackList):
        callbacks = CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
                                 steps=adapter.steps)
    runner = model_steps(model)
    callbacks.on_predict_begin()
    outputs = []
    try:
        for step, batch in adapter.epoch():
            callbacks.on_predict_batch_begin(step)
            xs_b, _, _, _ = _batch_arrays(model, adapter, batch, labelled=False)
            out = runner.predict(xs_b)
            outputs.append(out)
            callbacks.on_predict_batch_end(step, {"outputs": out})
    finally:
        _close(adapter)
    callbacks.on_predict_end()
    if not outputs:
        raise ValueError(f"model '{model.name}': predict() received no batches from its input")
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
        return logs if return_dict else _flatten(logs, model)
    _check_compiled(model, "train_on_batch")
    xs = input_arrays(model, x)
    labels = y
    y = label_arrays(model, y, len(xs[0]))
    if len(xs) == 1 and xs[0] is x and y is labels and type(x) is np.ndarray and type(y) is np.ndarray \
            and sample_weight is None and class_weight is None:
        model._train_batch_seen = (model_steps(model), x.shape, x.dtype, y.shape, y.dtype, _sparse_labels(model))
    sample_weight = weight_arrays(model, sample_weight, len(xs[0]))
    if class_weight is not None:
        if sample_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        sample_weight = class_weight_array(y, class_weight)
    logs = _step_after_reset(model, reset_metrics, lambda: model_steps(model).train(xs, y, sample_weight))
    return logs if return_dict else _flatten(logs, model)


def test_on_batch(model, x, y=None, sample_weight=None, reset_metrics=True, return_dict=False):
    _check_compiled(model, "test_on_batch")
    xs = input_arrays(model, x)
    y = label_arrays(model, y, len(xs[0]))
    logs = _step_after_reset(model, reset_metrics, lambda: model_steps(model).test(
        feeds_by_name(model, xs), y, weight_arrays(model, sample_weight, len(xs[0]))))
    return logs if return_dict else _flatten(logs, model)


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
