"""keras.metrics: stateful metrics whose updates are keras.ops math recorded as state updates.

A metric's state lives in ``keras.Variable``s. ``update_state`` computes the new state
with keras.ops and records it with ``backend.assign``, so it has one form that traces:
called on symbolic tensors (the compiled training step) it emits its update into that
graph; called on concrete data it traces a small graph for these shapes (cached), runs
it and writes the new state back, as ``Layer._call_eager`` does. ``result()`` reads the
state through ``read``, so inside a traced step it sees this step's update.
Formulas are Keras 3's.

A user metric subclasses ``Metric`` as in tf.keras: ``add_weight`` for its state (a
``MetricVariable``), ``update_state`` written with keras.ops that stores new state with
``var.assign(value)`` / ``var.assign_add`` / ``var.assign_sub`` (or ``self.assign(var, value)``),
and ``result`` computing with the variables (``var + 1``, ``ops.divide(tp, total)``, ...). A
metric variable read after its assignment in the same trace reads the assigned value, so
``result()`` traced after ``update_state`` in one step sees that step's update.

Submodules: confusion_metrics (AUC, the at-sensitivity/-specificity/-precision/-recall
family), iou_metrics (IoU, MeanIoU, BinaryIoU, OneHot*), score_metrics (F1Score,
FBetaScore, R2Score); this module holds the base classes, the mean-of-samples metrics and
the confusion-matrix counts they share.
"""
import functools
import inspect

import numpy as np

from ...ir.types import TensorType
from ...runtime.specializations import SpecializationCache
from .. import backend, initializers, losses, ops
from ..losses import as_tensor, cast, squeeze_or_expand_to_same_rank
from ..optimizers.base import current_value
from ..tensor import SymbolicTensor, Tensor, is_symbolic, to_array
from ..variables import Variable


def read(variable):
    """The metric state's value as a tensor: this trace's pending update, the variable's node, or
    (eagerly) a copy of its value."""
    value = current_value(variable)
    if not isinstance(value, Variable):
        return value
    b = backend.active_builder()
    return Tensor(np.array(value.numpy())) if b is None else SymbolicTensor(b, b.variable(value))


class MetricVariable(Variable):
    """A metric's state variable. ``assign``/``assign_add``/``assign_sub`` record the new value
    in the graph being traced (the compiled step, or the small graph an eager ``update_state``
    traces); outside a trace they write at once, as Keras's variables do."""
    reads_pending_update = True

    def assign(self, value):
        if is_symbolic(value) or backend.active_builder() is not None:
            value = as_tensor(value, self.dtype)
            if tuple(value.shape) != self.shape:
                raise ValueError(f"Variable {self.path!r}: cannot assign a value of shape {tuple(value.shape)} "
                                 f"to a variable of shape {self.shape}")
            backend.assign(self, value)
            return value
        Variable.assign(self, value)
        return self

    def assign_add(self, value):
        return self.assign(ops.add(self, value))

    def assign_sub(self, value):
        return self.assign(ops.subtract(self, value))


def standard_dtype(dtype, default="float32"):
    """Keras's dtype names: None -> ``default``, 'int' -> int32, 'float' -> float32."""
    if dtype is None:
        return default
    return {"int": "int32", "float": "float32"}.get(str(dtype), str(np.dtype(dtype)))


def _ones_like(x):
    """Ones with x's (possibly symbolic) shape: a select, so no static shape is needed."""
    return ops.where(True, 1.0, cast(x, "float32"))


def _traced_update(update_state):
    """Wrap a subclass's ``update_state``: run it in the graph being traced, or trace-and-run it."""
    @functools.wraps(update_state)
    def wrapper(self, *args, **kwargs):
        values = list(args) + list(kwargs.values())
        builder = next((x.builder for x in values if is_symbolic(x)), None) or backend.active_builder()
        if builder is None:
            return self._update_eagerly(update_state, args, kwargs)
        with backend.tracing(builder):
            return update_state(self, *args, **kwargs)
    return wrapper


class Metric:
    def __init__(self, name=None, dtype=None):
        self.name = name or backend.unique_name(backend.snake_case(type(self).__name__))
        self.dtype = standard_dtype(dtype)
        self._variables = []
        self._eager_graphs = SpecializationCache()  # (update function, argument types) -> traced update graph

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "update_state" in cls.__dict__:
            cls.update_state = _traced_update(cls.__dict__["update_state"])

    # ---- state ----------------------------------------------------------------------------

    def add_variable(self, shape=(), initializer="zeros", dtype=None, aggregation="sum", name=None):
        dtype = standard_dtype(dtype, self.dtype)
        value = initializers.get(initializer)(tuple(shape), dtype=dtype)
        var = MetricVariable(value, dtype=dtype, trainable=False, name=name or "variable",
                             path=f"{self.name}/{name or 'variable'}")
        self._variables.append(var)
        return var

    def add_weight(self, shape=(), initializer=None, dtype=None, name=None, aggregation="sum",
                   synchronization="auto"):
        """tf.keras's and Keras 3's add_weight (aggregation and synchronization are accepted
        for compatibility: one device holds the state)."""
        return self.add_variable(shape=shape, initializer=initializer or "zeros", dtype=dtype,
                                 aggregation=aggregation, name=name)

    @property
    def variables(self):
        return list(self._variables)

    weights = variables

    def get_weights(self):
        return [np.array(v.numpy()) for v in self._variables]

    def set_weights(self, weights):
        for var, value in zip(self._variables, weights):
            var.assign(value)

    def reset_state(self):
        for v in self._variables:
            v.assign(np.zeros(v.shape, v.dtype))

    reset_states = reset_state  # tf.keras 2's name

    def assign(self, variable, value):
        """Record ``variable := value`` in the graph being traced; returns the value."""
        value = cast(value, variable.dtype)
        backend.assign(variable, value)
        return value

    def assign_add(self, variable, value):
        return self.assign(variable, ops.add(current_value(variable), value))

    def assign_sub(self, variable, value):
        return self.assign(variable, ops.subtract(current_value(variable), value))

    # ---- the API ----------------------------------------------------------------------------

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement update_state")

    def result(self):
        raise NotImplementedError(f"{type(self).__name__} must implement result")

    def __call__(self, *args, **kwargs):
        self.update_state(*args, **kwargs)
        return self.result()

    def _update_eagerly(self, update_state, args, kwargs):
        """Trace ``update_state`` for these argument types (cached), run it and store the new state."""
        from ...runtime.executor import run_graph
        names = [f"arg{i}" for i in range(len(args))] + list(kwargs)
        arrays = [None if x is None else to_array(x, what=f"{self.name}.update_state")
                  for x in list(args) + list(kwargs.values())]
        key = (update_state, tuple(names), tuple(None if a is None else (a.shape, str(a.dtype)) for a in arrays))
        g = self._eager_graphs.get(key)
        if g is None:
            b = backend.new_trace_builder(name=f"{self.name}_update_state")
            sym = [None if a is None else SymbolicTensor(b, b.input(n, TensorType(a.shape, str(a.dtype))))
                   for n, a in zip(names, arrays)]
            with backend.tracing(b):
                update_state(self, *sym[:len(args)], **dict(zip(names[len(args):], sym[len(args):])))
            b.g.graph["outputs"] = []
            g = self._eager_graphs[key] = b.g
        _, updates = run_graph(g, {n: a for n, a in zip(names, arrays) if a is not None})
        new_values = {vnode: np.array(value) for vnode, value in updates.items()}
        for vnode, value in new_values.items():
            g.graph["variables"][vnode].assign(value)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


# ---- reductions -----------------------------------------------------------------------------

def reduce_to_samplewise_values(values, sample_weight, reduce_fn, dtype):
    """Keras 3: weight values and reduce them to one value per sample (and weights likewise)."""
    mask = getattr(values, "_keras_mask", None)
    values = cast(as_tensor(values), dtype)
    if sample_weight is not None:
        sample_weight = as_tensor(sample_weight, dtype)
        if mask is not None:
            mask, sample_weight = squeeze_or_expand_to_same_rank(cast(mask, dtype), sample_weight)
            sample_weight = sample_weight * mask
        values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
        weight_ndim, values_ndim = len(sample_weight.shape), len(values.shape)
        if values_ndim > weight_ndim:
            values = reduce_fn(values, axis=list(range(weight_ndim, values_ndim)))
        sample_weight = ops.where(True, sample_weight, values)  # broadcast to the values' shape
        values = values * sample_weight
        if weight_ndim > 1:
            sample_weight = reduce_fn(sample_weight, axis=list(range(1, weight_ndim)))
    if len(values.shape) > 1:
        values = reduce_fn(values, axis=list(range(1, len(values.shape))))
    return values, sample_weight


class Sum(Metric):
    def __init__(self, name="sum", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, values, sample_weight=None):
        values, _ = reduce_to_samplewise_values(values, sample_weight, ops.sum, self.dtype)
        self.assign_add(self.total, ops.sum(values))

    def result(self):
        return cast(read(self.total), self.dtype)


class Mean(Metric):
    def __init__(self, name="mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, sample_weight=None):
        values, sample_weight = reduce_to_samplewise_values(values, sample_weight, ops.mean, self.dtype)
        self.assign_add(self.total, ops.sum(values))
        if sample_weight is not None:
            num_samples = ops.sum(sample_weight)
        elif len(values.shape) >= 1:
            n = values.shape[0]
            num_samples = float(n) if n is not None else ops.sum(_ones_like(values))
        else:
            num_samples = 1.0
        self.assign_add(self.count, num_samples)

    def result(self):
        return ops.divide_no_nan(read(self.total), read(self.count))


class MeanMetricWrapper(Mean):
    """The mean over samples of ``fn(y_true, y_pred, **kwargs)`` (accuracies, losses as metrics)."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", None), dtype=dtype)
        self._fn = fn
        self._fn_kwargs = kwargs

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = getattr(y_pred, "_keras_mask", None)
        values = self._fn(y_true, y_pred, **self._fn_kwargs)
        if mask is not None:
            mask = cast(mask, self.dtype)
            if sample_weight is None:
                sample_weight = mask
            else:
                mask, sample_weight = squeeze_or_expand_to_same_rank(mask, as_tensor(sample_weight, self.dtype))
                sample_weight = sample_weight * mask
        Mean.update_state(self, values, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        if type(self) is MeanMetricWrapper:
            config["fn"] = getattr(self._fn, "__name__", repr(self._fn))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("fn"), str):
            config["fn"] = get(config["fn"])
        return cls(**config)


# ---- accuracy functions -------------------------------------------------------------------

def accuracy(y_true, y_pred):
    y_pred = as_tensor(y_pred)
    y_true = as_tensor(y_true, y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    return ops.cast(ops.equal(y_true, y_pred), "float32")


def binary_accuracy(y_true, y_pred, threshold=0.5):
    y_pred, y_true = as_tensor(y_pred), as_tensor(y_true)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    y_pred = ops.cast(ops.greater(cast(y_pred, "float32"), float(threshold)), y_true.dtype)
    return ops.cast(ops.equal(y_true, y_pred), "float32")


def categorical_accuracy(y_true, y_pred):
    y_true = ops.argmax(as_tensor(y_true, "float32"), axis=-1)
    y_pred = as_tensor(y_pred)
    true_shape = tuple(y_true.shape)
    reshape_matches = len(y_true.shape) == len(y_pred.shape)
    if reshape_matches:
        y_true = ops.squeeze(y_true, -1)
    matches = ops.cast(ops.equal(y_true, ops.argmax(y_pred, axis=-1)), "float32")
    return ops.reshape(matches, true_shape) if reshape_matches else matches


def sparse_categorical_accuracy(y_true, y_pred):
    y_pred = as_tensor(y_pred)
    y_true = as_tensor(y_true, "float32")
    true_shape = tuple(y_true.shape)
    reshape_matches = len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1
    if reshape_matches:
        y_true = ops.squeeze(y_true, -1)
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "float32")
    matches = ops.cast(ops.equal(y_true, predicted), "float32")
    if reshape_matches:
        matches = ops.reshape(matches, true_shape)
    if len(matches.shape) > 1 and matches.shape[-1] == 1:
        matches = ops.squeeze(matches, -1)
    return matches


def in_top_k(targets, predictions, k):
    """tf.math.in_top_k: whether each row's target class is among its k largest predictions; a
    class tied with the k-th counts as in (its rank is the number of strictly larger values).
    A target outside the classes or a row with a non-finite value gives False."""
    n = predictions.shape[-1]
    targets = cast(targets, "int32")
    chosen = ops.equal(ops.expand_dims(targets, -1), np.arange(n, dtype=np.int32))
    target_value = ops.sum(ops.where(chosen, predictions, 0.0), axis=-1, keepdims=True)
    larger = ops.sum(ops.cast(ops.greater(predictions, target_value), "float32"), axis=-1)
    finite = ops.all(ops.less(ops.abs(predictions), np.float32(np.inf)), axis=-1)
    in_range = ops.logical_and(ops.greater_equal(targets, 0), ops.less(targets, n))
    return ops.logical_and(ops.logical_and(ops.less(larger, float(k)), finite), in_range)


def _flat_top_k_matches(y_true, y_pred, matches_fn):
    """Keras's reshaping around in_top_k: predictions flattened to (-1, classes), labels to (-1,),
    matches shaped back like the labels."""
    true_shape = tuple(y_true.shape)
    if len(y_pred.shape) > 2:
        y_pred = ops.reshape(y_pred, (-1, y_pred.shape[-1]))
    reshape_matches = len(true_shape) > 1
    if reshape_matches:
        y_true = ops.reshape(y_true, (-1,))
    matches = ops.cast(matches_fn(y_true, y_pred), "float32")
    return ops.reshape(matches, tuple(-1 if d is None else d for d in true_shape)) if reshape_matches else matches


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    y_pred = as_tensor(y_pred, "float32")
    y_true = ops.argmax(as_tensor(y_true, "float32"), axis=-1)
    return _flat_top_k_matches(y_true, y_pred, lambda t, p: in_top_k(t, p, k))


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5, from_sorted_ids=False):
    """With ``from_sorted_ids`` y_pred holds class ids sorted by score: a match is the label among
    the first k of them."""
    y_pred = as_tensor(y_pred)
    y_true = as_tensor(y_true, y_pred.dtype if from_sorted_ids else "int32")

    def matches(t, p):
        if from_sorted_ids:
            return ops.any(ops.equal(ops.expand_dims(t, 1), p[:, :k]), axis=1)
        return in_top_k(t, p, k)
    return _flat_top_k_matches(y_true, cast(y_pred, "float32"), matches)


def pearson_correlation(y_true, y_pred, axis=-1):
    y_true, y_pred = squeeze_or_expand_to_same_rank(as_tensor(y_true, "float32"), as_tensor(y_pred, "float32"))
    y_true_norm = y_true - ops.mean(y_true, axis=axis, keepdims=True)
    y_pred_norm = y_pred - ops.mean(y_pred, axis=axis, keepdims=True)
    y_true_norm = y_true_norm / ops.std(y_true_norm, axis=axis, keepdims=True)
    y_pred_norm = y_pred_norm / ops.std(y_pred_norm, axis=axis, keepdims=True)
    return ops.mean(y_true_norm * y_pred_norm, axis=axis)


def concordance_correlation(y_true, y_pred, axis=-1):
    y_true, y_pred = squeeze_or_expand_to_same_rank(as_tensor(y_true, "float32"), as_tensor(y_pred, "float32"))
    y_true_mean = ops.mean(y_true, axis=axis, keepdims=True)
    y_pred_mean = ops.mean(y_pred, axis=axis, keepdims=True)
    y_true_var = ops.var(y_true - y_true_mean, axis=axis, keepdims=True)
    y_pred_var = ops.var(y_pred - y_pred_mean, axis=axis, keepdims=True)
    covar = (y_true - y_pred_mean) * (y_pred - y_pred_mean)  # sic: Keras centres y_true on y_pred's mean
    norm = y_true_var + y_pred_var + ops.square(y_true_mean - y_pred_mean)
    return ops.mean(2 * covar / (norm + losses.EPSILON), axis=axis)


def _mean_metric_class(class_name, fn, default_name, arg_names=()):
    """A MeanMetricWrapper subclass with Keras's constructor (name, dtype, *fn keyword args)."""
    defaults = dict(arg_names)

    def __init__(self, name=default_name, dtype=None, **kwargs):
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{class_name}: unexpected keyword argument(s) {sorted(unknown)}")
        params = dict(defaults, **kwargs)
        MeanMetricWrapper.__init__(self, fn, name=name, dtype=dtype, **params)
        for k, v in params.items():
            setattr(self, k, v)

    return type(class_name, (MeanMetricWrapper,), {"__init__": __init__, "__module__": __name__,
                                                   "__doc__": f"The mean of ``{fn.__name__}`` over samples."})


Accuracy = _mean_metric_class("Accuracy", accuracy, "accuracy")
BinaryAccuracy = _mean_metric_class("BinaryAccuracy", binary_accuracy, "binary_accuracy", [("threshold", 0.5)])
CategoricalAccuracy = _mean_metric_class("CategoricalAccuracy", categorical_accuracy, "categorical_accuracy")
SparseCategoricalAccuracy = _mean_metric_class("SparseCategoricalAccuracy", sparse_categorical_accuracy,
                                               "sparse_categorical_accuracy")
MeanSquaredError = _mean_metric_class("MeanSquaredError", losses.mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _mean_metric_class("MeanAbsoluteError", losses.mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _mean_metric_class("MeanAbsolutePercentageError",
                                                 losses.mean_absolute_percentage_error,
                                                 "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _mean_metric_class("MeanSquaredLogarithmicError",
                                                 losses.mean_squared_logarithmic_error,
                                                 "mean_squared_logarithmic_error")
KLDivergence = _mean_metric_class("KLDivergence", losses.kl_divergence, "kl_divergence")
Poisson = _mean_metric_class("Poisson", losses.poisson, "poisson")
Hinge = _mean_metric_class("Hinge", losses.hinge, "hinge")
SquaredHinge = _mean_metric_class("SquaredHinge", losses.squared_hinge, "squared_hinge")
CategoricalHinge = _mean_metric_class("CategoricalHinge", losses.categorical_hinge, "categorical_hinge")
LogCoshError = _mean_metric_class("LogCoshError", losses.log_cosh, "logcosh")
CosineSimilarity = _mean_metric_class("CosineSimilarity", lambda t, p, axis: -losses.cosine_similarity(t, p, axis),
                                      "cosine_similarity", [("axis", -1)])
BinaryCrossentropy = _mean_metric_class("BinaryCrossentropy", losses.binary_crossentropy, "binary_crossentropy",
                                        [("from_logits", False), ("label_smoothing", 0.0)])
CategoricalCrossentropy = _mean_metric_class("CategoricalCrossentropy", losses.categorical_crossentropy,
                                             "categorical_crossentropy",
                                             [("from_logits", False), ("label_smoothing", 0.0), ("axis", -1)])
SparseCategoricalCrossentropy = _mean_metric_class("SparseCategoricalCrossentropy",
                                                   losses.sparse_categorical_crossentropy,
                                                   "sparse_categorical_crossentropy",
                                                   [("from_logits", False), ("axis", -1)])


TopKCategoricalAccuracy = _mean_metric_class("TopKCategoricalAccuracy", top_k_categorical_accuracy,
                                             "top_k_categorical_accuracy", [("k", 5)])
SparseTopKCategoricalAccuracy = _mean_metric_class("SparseTopKCategoricalAccuracy",
                                                   sparse_top_k_categorical_accuracy,
                                                   "sparse_top_k_categorical_accuracy",
                                                   [("k", 5), ("from_sorted_ids", False)])
PearsonCorrelation = _mean_metric_class("PearsonCorrelation", pearson_correlation, "pearson_correlation",
                                        [("axis", -1)])
ConcordanceCorrelation = _mean_metric_class("ConcordanceCorrelation", concordance_correlation,
                                            "concordance_correlation", [("axis", -1)])


class RootMeanSquaredError(Mean):
    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = losses._pair(y_true, y_pred)
        Mean.update_state(self, ops.square(y_pred - y_true), sample_weight=sample_weight)

    def result(self):
        return ops.sqrt(super().result())


# ---- confusion-matrix counts --------------------------------------------------------------

NEG_INF = -1e10  # Keras's stand-in for predictions outside the top k


def _thresholds(thresholds, default=0.5):
    """The thresholds as a list of floats; the ones given must lie in [0, 1] (the default need not:
    Keras's top_k metrics use NEG_INF)."""
    if thresholds is None:
        return [float(default)]
    values = list(thresholds) if isinstance(thresholds, (list, tuple)) else [thresholds]
    if any(not 0 <= t <= 1 for t in values):
        raise ValueError(f"Threshold values must be in [0, 1]. Received: {values}")
    return [float(t) for t in values]


def filter_top_k(x, k):
    """x where the value is among the k largest of its last axis, else NEG_INF. Ties go to the
    lower index, as ops.top_k orders them: an element's rank is the number of larger elements
    plus the number of equal ones before it."""
    n = x.shape[-1]
    row, col = ops.expand_dims(x, -1), ops.expand_dims(x, -2)  # [..., i, j]: x_i and x_j
    before = np.tril(np.ones((n, n), bool), -1)  # j < i
    ahead = ops.logical_or(ops.greater(col, row), ops.logical_and(ops.equal(col, row), before))
    rank = ops.sum(ops.cast(ahead, "float32"), axis=-1)
    return ops.where(ops.less(rank, float(k)), x, NEG_INF)


def confusion_counts(conditions, y_true, y_pred, thresholds, class_id=None, sample_weight=None, top_k=None,
                     multi_label=False, label_weights=None, evenly_spaced=False, with_epsilon=False):
    """{condition: weighted counts} for conditions among 'tp', 'fp', 'tn', 'fn', as Keras's
    update_confusion_matrix_variables: a label is positive when non-zero; counts have shape
    (len(thresholds),), or (len(thresholds), labels) with ``multi_label``.

    A prediction is positive at threshold t when y_pred > t. With ``evenly_spaced`` thresholds
    (0, 1/(T-1), ..., 1) Keras buckets predictions instead: clipped to [0, 1], positive at
    threshold i when y_pred * (T-1) > i (the same test Keras's bucket index makes, so values
    on the grid count as Keras counts them); ``with_epsilon`` (AUC's grid, whose ends are
    -epsilon and 1 + epsilon) makes every prediction positive at the first threshold."""
    y_true, y_pred = cast(as_tensor(y_true), "float32"), cast(as_tensor(y_pred), "float32")
    y_pred, y_true = squeeze_or_expand_to_same_rank(y_pred, y_true)
    if sample_weight is not None:
        sample_weight = ops.expand_dims(as_tensor(sample_weight, "float32"), -1)
        _, sample_weight = squeeze_or_expand_to_same_rank(y_true, sample_weight, expand_rank_1=False)
    if top_k is not None:
        y_pred = filter_top_k(y_pred, top_k)
    if class_id is not None:
        if len(y_pred.shape) == 1:
            raise ValueError("When class_id is provided, y_pred must be a 2D array with shape (num_samples, "
                             f"num_classes), found shape: {tuple(y_pred.shape)}")
        if not 0 <= class_id < y_pred.shape[-1]:
            raise ValueError(f"class_id={class_id} is outside the {y_pred.shape[-1]} classes of y_pred")
        pick = (Ellipsis, slice(class_id, class_id + 1))
        y_true, y_pred = y_true[pick], y_pred[pick]
    weight = sample_weight
    if label_weights is not None and not multi_label:
        weight = label_weights if weight is None else ops.multiply(weight, label_weights)
    rank = len(y_pred.shape)
    if evenly_spaced:
        levels = np.arange(len(thresholds), dtype=np.float32)
        if with_epsilon:
            levels[0] = -1.0
        y_pred = ops.multiply(ops.clip(y_pred, 0.0, 1.0), float(len(thresholds) - 1))
    else:
        levels = np.asarray(thresholds, np.float32)
    # A leading thresholds axis: (T, 1, ...) against (1, ...) data.
    levels = levels.reshape((len(thresholds),) + (1,) * rank)
    pred_pos = ops.greater(ops.expand_dims(y_pred, 0), levels)
    label_pos = ops.expand_dims(ops.not_equal(y_true, 0.0), 0)
    if weight is not None:
        weight = ops.expand_dims(ops.where(True, weight, y_pred), 0)  # broadcast to the predictions
    pairs = {"tp": (label_pos, pred_pos), "fp": (ops.logical_not(label_pos), pred_pos),
             "fn": (label_pos, ops.logical_not(pred_pos)),
             "tn": (ops.logical_not(label_pos), ops.logical_not(pred_pos))}
    summed = list(range(1, rank if multi_label else rank + 1))
    out = {}
    for cond in conditions:
        both = ops.logical_and(*pairs[cond])
        hits = ops.cast(both, "float32") if weight is None else ops.where(both, weight, 0.0)
        out[cond] = ops.sum(hits, axis=summed) if summed else hits
    return out


class _ConfusionMatrixConditionCount(Metric):
    _condition = None

    def __init__(self, thresholds=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.init_thresholds = thresholds
        self.thresholds = _thresholds(thresholds)
        self.accumulator = self.add_variable(shape=(len(self.thresholds),), initializer="zeros", name="accumulator")

    def update_state(self, y_true, y_pred, sample_weight=None):
        counts = confusion_counts([self._condition], y_true, y_pred, self.thresholds, sample_weight=sample_weight)
        self.assign_add(self.accumulator, counts[self._condition])

    def result(self):
        value = read(self.accumulator)
        return value[0] if len(self.thresholds) == 1 else value

    def get_config(self):
        return dict(super().get_config(), thresholds=self.init_thresholds)


class TruePositives(_ConfusionMatrixConditionCount):
    _condition = "tp"


class TrueNegatives(_ConfusionMatrixConditionCount):
    _condition = "tn"


class FalsePositives(_ConfusionMatrixConditionCount):
    _condition = "fp"


class FalseNegatives(_ConfusionMatrixConditionCount):
    _condition = "fn"


class _PrecisionRecall(Metric):
    _other = None  # 'fp' for precision, 'fn' for recall

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.init_thresholds, self.top_k, self.class_id = thresholds, top_k, class_id
        self.thresholds = _thresholds(thresholds, default=0.5 if top_k is None else NEG_INF)
        n = len(self.thresholds)
        self.true_positives = self.add_variable(shape=(n,), initializer="zeros", name="true_positives")
        other_name = "false_positives" if self._other == "fp" else "false_negatives"
        self._other_counts = self.add_variable(shape=(n,), initializer="zeros", name=other_name)
        setattr(self, other_name, self._other_counts)

    def update_state(self, y_true, y_pred, sample_weight=None):
        counts = confusion_counts(["tp", self._other], y_true, y_pred, self.thresholds, self.class_id,
                                  sample_weight, top_k=self.top_k)
        self.assign_add(self.true_positives, counts["tp"])
        self.assign_add(self._other_counts, counts[self._other])

    def result(self):
        tp = read(self.true_positives)
        value = ops.divide_no_nan(tp, ops.add(tp, read(self._other_counts)))
        return value[0] if len(self.thresholds) == 1 else value

    def get_config(self):
        return dict(super().get_config(), thresholds=self.init_thresholds, top_k=self.top_k, class_id=self.class_id)


class Precision(_PrecisionRecall):
    _other = "fp"


class Recall(_PrecisionRecall):
    _other = "fn"


# ---- the submodules' metrics (they build on the classes above) -------------------------------

from .confusion_metrics import (AUC, PrecisionAtRecall, RecallAtPrecision, SensitivityAtSpecificity,  # noqa: E402
                                SensitivitySpecificityBase, SpecificityAtSensitivity)
from .iou_metrics import BinaryIoU, IoU, MeanIoU, OneHotIoU, OneHotMeanIoU  # noqa: E402
from .score_metrics import F1Score, FBetaScore, R2Score  # noqa: E402

# ---- names ----------------------------------------------------------------------------------

_CLASSES = [Metric, Mean, Sum, MeanMetricWrapper, Accuracy, BinaryAccuracy, CategoricalAccuracy,
            SparseCategoricalAccuracy, MeanSquaredError, MeanAbsoluteError, MeanAbsolutePercentageError,
            MeanSquaredLogarithmicError, RootMeanSquaredError, KLDivergence, Poisson, Hinge, SquaredHinge,
            CategoricalHinge, LogCoshError, CosineSimilarity, BinaryCrossentropy, CategoricalCrossentropy,
            SparseCategoricalCrossentropy, TruePositives, TrueNegatives, FalsePositives, FalseNegatives,
            Precision, Recall, TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, PearsonCorrelation,
            ConcordanceCorrelation, AUC, PrecisionAtRecall, RecallAtPrecision, SensitivityAtSpecificity,
            SpecificityAtSensitivity, IoU, MeanIoU, BinaryIoU, OneHotIoU, OneHotMeanIoU, F1Score, FBetaScore,
            R2Score]

ALL_OBJECTS = {c.__name__: c for c in _CLASSES}
ALL_OBJECTS.update({backend.snake_case(c.__name__): c for c in _CLASSES})
ALL_OBJECTS.update({"mse": MeanSquaredError, "MSE": MeanSquaredError, "mae": MeanAbsoluteError,
                    "MAE": MeanAbsoluteError, "mape": MeanAbsolutePercentageError,
                    "MAPE": MeanAbsolutePercentageError, "msle": MeanSquaredLogarithmicError,
                    "MSLE": MeanSquaredLogarithmicError, "bce": BinaryCrossentropy, "BCE": BinaryCrossentropy,
                    "acc": Accuracy, "kld": KLDivergence, "KLD": KLDivergence, "logcosh": LogCoshError,
                    "log_cosh": LogCoshError, "kl_divergence": KLDivergence})

mse = MSE = mean_squared_error = losses.mean_squared_error
mae = MAE = mean_absolute_error = losses.mean_absolute_error
# keras.metrics also exports the losses' per-sample functions
mean_absolute_percentage_error = losses.mean_absolute_percentage_error
mean_squared_logarithmic_error = losses.mean_squared_logarithmic_error
binary_crossentropy = losses.binary_crossentropy
categorical_crossentropy = losses.categorical_crossentropy
sparse_categorical_crossentropy = losses.sparse_categorical_crossentropy
hinge, squared_hinge, categorical_hinge = losses.hinge, losses.squared_hinge, losses.categorical_hinge
kl_divergence, poisson, log_cosh, huber = losses.kl_divergence, losses.poisson, losses.log_cosh, losses.huber


def _unknown(identifier):
    raise ValueError(f"Could not interpret metric identifier: {identifier!r}. Known metrics: "
                     f"{', '.join(sorted(k for k in ALL_OBJECTS if k not in ('Metric', 'metric')))}")


def serialize(metric):
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(config, custom_objects=None):
    objects = dict(ALL_OBJECTS, **(custom_objects or {}))
    if isinstance(config, str):
        return get(config)
    cls = objects.get(config.get("class_name"))
    if cls is None:
        _unknown(config.get("class_name"))
    return cls.from_config(config.get("config", {}))


def get(identifier, loss=None, y_true_shape=None, y_pred_shape=None):
    """A metric from a name, config dict, class, instance or function (returned as it is), as
    keras.metrics.get. With ``loss`` (or shapes), 'accuracy'/'acc' resolve as compile does."""
    if isinstance(identifier, str) and identifier.lower() in ("accuracy", "acc") and (
            loss is not None or y_pred_shape is not None):
        return resolve_metric(identifier, loss, y_true_shape, y_pred_shape)
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        return deserialize(identifier)
    obj = ALL_OBJECTS.get(identifier) if isinstance(identifier, str) else identifier
    if obj is None:
        _unknown(identifier)
    if inspect.isclass(obj):
        return obj()
    if callable(obj):
        return obj
    _unknown(identifier)


def _loss_kind(loss):
    """'binary', 'sparse' or 'categorical' for a loss given as name, function, class or instance."""
    if isinstance(loss, str):
        loss = losses.ALL_OBJECTS.get(loss, loss)
    fn = getattr(loss, "fn", loss)
    if isinstance(loss, losses.SparseCategoricalCrossentropy) or fn is losses.sparse_categorical_crossentropy or (
            inspect.isclass(loss) and issubclass(loss, losses.SparseCategoricalCrossentropy)):
        return "sparse"
    if fn is losses.binary_crossentropy or (inspect.isclass(loss) and issubclass(loss, losses.BinaryCrossentropy)):
        return "binary"
    return "categorical"


def resolve_metric(identifier, loss=None, y_true_shape=None, y_pred_shape=None):
    """The metric object ``compile(metrics=[identifier])`` uses, named ``identifier`` when it is a string.

    'accuracy'/'acc' become Binary-, SparseCategorical- or CategoricalAccuracy. Keras decides from the
    shapes (binary when y_pred's last dimension is 1; sparse when y_true has lower rank than y_pred, or
    a last dimension of 1 against y_pred's > 1); whatever the shapes leave open is decided by the loss
    (binary crossentropy -> binary, sparse categorical crossentropy -> sparse, else categorical).
    Functions (built-in or user-written with keras.ops) are wrapped in a MeanMetricWrapper."""
    if isinstance(identifier, str) and identifier.lower() in ("accuracy", "acc"):
        kind = _loss_kind(loss)
        if y_pred_shape is not None and y_pred_shape[-1] == 1:
            kind = "binary"
        elif y_pred_shape is not None and y_true_shape is not None:
            sparse = len(y_true_shape) < len(y_pred_shape) or (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1)
            kind = "sparse" if sparse else "categorical"
        cls = {"binary": BinaryAccuracy, "sparse": SparseCategoricalAccuracy, "categorical": CategoricalAccuracy}
        return cls[kind](name=identifier)
    metric = get(identifier)
    if not isinstance(metric, Metric):
        metric = MeanMetricWrapper(metric, name=getattr(metric, "__name__", None))
    if isinstance(identifier, str):
        metric.name = identifier
    return metric
