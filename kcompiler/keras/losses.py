"""keras.losses: loss classes, loss functions and their string names, written with keras.ops.

Every loss is plain keras.ops math, so the same code runs eagerly on concrete values
(``MeanSquaredError()([0., 1.], [0.1, 0.8])``) and traces into the training-step
graph, where the compiler differentiates it. Numerics follow Keras 3 (TensorFlow
backend): crossentropies clip probabilities to [1e-7, 1 - 1e-7] with no extra epsilon
in the log, categorical crossentropy first divides predictions by their row sum, and
the default reduction with sample weights divides by the number of samples.

When ``y_pred`` is, in the graph being traced, the output of a softmax (sigmoid) op,
the crossentropies use the op's input as logits, as Keras 3 does inside a compiled
training step (its ``_keras_logits``); on concrete values the probabilities are used.
"""
import inspect
import warnings

import numpy as np

from ..errors import ShapeError
from ..ir.types import fmt_shape
from . import backend, ops
from .tensor import SymbolicTensor, Tensor, to_array
from .variables import Variable

EPSILON = 1e-7  # keras.backend.epsilon()


class Reduction:
    """Reduction names (tf.keras 2's ``keras.losses.Reduction``); Keras 3 also takes 'mean'."""
    AUTO = "auto"
    NONE = "none"
    SUM = "sum"
    SUM_OVER_BATCH_SIZE = "sum_over_batch_size"

    @classmethod
    def all(cls):
        return (cls.AUTO, cls.NONE, cls.SUM, cls.SUM_OVER_BATCH_SIZE)

    @classmethod
    def validate(cls, key):
        standardize_reduction(key)


_REDUCTIONS = ("sum_over_batch_size", "sum", "none", None, "mean", "mean_with_sample_weight", "auto")


def standardize_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Invalid value for argument `reduction`: {reduction!r}. Expected one of "
                         f"{', '.join(repr(r) for r in _REDUCTIONS)}")
    return "sum_over_batch_size" if reduction == "auto" else reduction  # Keras 2's 'auto'


# ---- tensor helpers ---------------------------------------------------------------------

def as_tensor(x, dtype=None):
    """Traced tensors and variables as they are (cast if ``dtype`` differs); data as a Tensor."""
    if isinstance(x, (SymbolicTensor, Tensor, Variable)):
        return x if dtype is None or x.dtype == dtype else ops.cast(x, dtype)
    return Tensor(to_array(x, dtype=dtype, what="loss input"))


def cast(x, dtype):
    return x if x.dtype == dtype else ops.cast(x, dtype)


def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Keras's rule: when ranks differ by one and the longer has a trailing 1, match them."""
    r1, r2 = len(x1.shape), len(x2.shape)
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = ops.expand_dims(x2, -1)
        else:
            x1 = ops.squeeze(x1, -1)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = ops.expand_dims(x1, -1)
        else:
            x2 = ops.squeeze(x2, -1)
    return x1, x2


def reduce_weighted_values(values, sample_weight=None, mask=None, reduction="sum_over_batch_size"):
    """Weight per-sample losses and reduce them (Keras 3's ``reduce_weighted_values``)."""
    reduction = standardize_reduction(reduction)
    valid = None
    if mask is not None:
        valid = cast(mask, "float32")
        if sample_weight is None:
            sample_weight = valid
        else:
            valid_b, sw = squeeze_or_expand_to_same_rank(valid, as_tensor(sample_weight, "float32"))
            sample_weight = sw * valid_b
    if sample_weight is not None:
        values, sample_weight = squeeze_or_expand_to_same_rank(values, as_tensor(sample_weight, "float32"))
        # per-sample weights (batch,) against per-element losses of higher rank (mse on an image
        # or a sequence output): one weight per sample, broadcast over its elements (tf.keras 2's
        # rule; Keras 3 passes no weights at all when fit is given none, which is the same)
        while len(sample_weight.shape) < len(values.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        values = values * sample_weight
    if reduction in (None, "none") or tuple(values.shape) in ((), (0,)):
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        return ops.divide_no_nan(total, ops.sum(sample_weight))
    if valid is not None:
        # Keras weights valid entries by size/valid and divides by size: sum / number valid.
        return ops.divide_no_nan(total, ops.sum(valid))
    return ops.mean(values)  # sum / number of elements, with a symbolic batch dimension too


def logits_behind(y_pred, op_name, axis=-1):
    """The input of ``y_pred``'s producing op when that op is ``op_name`` (softmax/sigmoid) in the
    graph being traced, as Keras 3 reads ``_keras_logits``; None otherwise."""
    if not isinstance(y_pred, SymbolicTensor):
        return None
    b, node = y_pred.builder, y_pred.builder.g.nodes[y_pred.node]
    if node["op"] != op_name:
        return None
    if op_name == "softmax" and node["attrs"].get("axis", -1) % len(y_pred.shape) != axis % len(y_pred.shape):
        return None
    return SymbolicTensor(b, b.operands(y_pred.node)[0])


def _check_same_shape(fn_name, y_true, y_pred):
    t, p = tuple(y_true.shape), tuple(y_pred.shape)
    if len(t) != len(p) or any(a is not None and c is not None and a != c for a, c in zip(t, p)):
        raise ShapeError(f"{fn_name}: y_true and y_pred must have the same shape; got y_true of shape "
                         f"{fmt_shape(t)} and y_pred of shape {fmt_shape(p)}")


# ---- the Loss base class ----------------------------------------------------------------

class Loss:
    """Base class: subclasses implement ``call(y_true, y_pred)`` -> per-sample losses with keras.ops."""
    _integer_labels = False  # sparse losses keep their labels' dtype

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        self.name = name or backend.unique_name(backend.snake_case(type(self).__name__))
        self.reduction = standardize_reduction(reduction)
        self.dtype = "float32" if dtype is None else str(dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        in_mask = getattr(y_pred, "_keras_mask", None)
        y_pred = as_tensor(y_pred, "float32")
        y_true = as_tensor(y_true, None if self._integer_labels else "float32")
        try:
            values = self.call(y_true, y_pred)
        except ShapeError as e:
            raise ShapeError(f"{type(self).__name__}: {e} (y_true shape {fmt_shape(y_true.shape)}, "
                             f"y_pred shape {fmt_shape(y_pred.shape)})") from None
        out_mask = getattr(values, "_keras_mask", None)
        mask = in_mask if out_mask is None else (
            out_mask if in_mask is None else ops.logical_and(cast(in_mask, "bool"), cast(out_mask, "bool")))
        try:
            return reduce_weighted_values(values, sample_weight, mask, self.reduction)
        except ShapeError as e:
            sw_shape = sample_weight.shape if hasattr(sample_weight, "shape") else np.shape(sample_weight)
            raise ShapeError(f"{type(self).__name__}: sample_weight of shape {fmt_shape(sw_shape)} "
                             f"does not fit the per-sample losses of shape {fmt_shape(values.shape)}: {e}") from None

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__} must implement call(y_true, y_pred)")

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, reduction={self.reduction}>"


class LossFunctionWrapper(Loss):
    """A loss made from a function ``fn(y_true, y_pred, **kwargs)`` -> per-sample losses."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        if type(self) is LossFunctionWrapper:
            config["fn"] = getattr(self.fn, "__name__", repr(self.fn))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "fn" in config and isinstance(config["fn"], str):
            config["fn"] = get(config["fn"])
        return cls(**config)

    def __repr__(self):
        return f"<LossFunctionWrapper({getattr(self.fn, '__name__', self.fn)}, kwargs={self._fn_kwargs})>"


# ---- loss functions (per-sample values, no reduction) -----------------------------------

def _pair(y_true, y_pred, squeeze=True):
    y_pred = as_tensor(y_pred)
    if not y_pred.dtype.startswith("float"):
        y_pred = cast(y_pred, "float32")
    y_true = as_tensor(y_true, y_pred.dtype)
    return squeeze_or_expand_to_same_rank(y_true, y_pred) if squeeze else (y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    return ops.mean(ops.abs(y_true - y_pred), axis=-1)


def mean_absolute_percentage_error(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    diff = ops.abs((y_true - y_pred) / ops.maximum(ops.abs(y_true), EPSILON))
    return 100.0 * ops.mean(diff, axis=-1)


def mean_squared_logarithmic_error(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    first_log = ops.log(ops.maximum(y_pred, EPSILON) + 1.0)
    second_log = ops.log(ops.maximum(y_true, EPSILON) + 1.0)
    return ops.mean(ops.square(first_log - second_log), axis=-1)


def l2_normalize(x, axis=-1):
    """x * min(rsqrt(sum(x^2)), 1/epsilon): Keras 3's ``ops.nn.normalize`` for order 2."""
    inv_norm = ops.rsqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x * ops.minimum(inv_norm, 1.0 / EPSILON)


def cosine_similarity(y_true, y_pred, axis=-1):
    y_true, y_pred = _pair(y_true, y_pred)
    return -ops.sum(l2_normalize(y_true, axis) * l2_normalize(y_pred, axis), axis=axis)


def huber(y_true, y_pred, delta=1.0):
    y_true, y_pred = _pair(y_true, y_pred)
    delta = float(delta)
    error = y_pred - y_true
    abs_error = ops.abs(error)
    quadratic = 0.5 * ops.square(error)
    linear = delta * abs_error - 0.5 * delta * delta
    return ops.mean(ops.where(ops.less_equal(abs_error, delta), quadratic, linear), axis=-1)


def log_cosh(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    x = y_pred - y_true
    log2 = 0.6931471805599453
    return ops.mean(x + ops.softplus(x * -2.0) - log2, axis=-1)


def _binary_labels_to_hinge(y_true):
    """0/1 labels become -1/1; any other labels are left as they are (decided over the whole batch)."""
    is_binary = ops.all(ops.logical_or(ops.equal(y_true, 0.0), ops.equal(y_true, 1.0)))
    return ops.where(is_binary, 2.0 * y_true - 1.0, y_true)


def hinge(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    y_true = _binary_labels_to_hinge(y_true)
    return ops.mean(ops.maximum(1.0 - y_true * y_pred, 0.0), axis=-1)


def squared_hinge(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    y_true = _binary_labels_to_hinge(y_true)
    return ops.mean(ops.square(ops.maximum(1.0 - y_true * y_pred, 0.0)), axis=-1)


def categorical_hinge(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    pos = ops.sum(y_true * y_pred, axis=-1)
    neg = ops.max((1.0 - y_true) * y_pred, axis=-1)
    return ops.maximum(neg - pos + 1.0, 0.0)


def kl_divergence(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    y_true = ops.clip(y_true, EPSILON, 1.0)
    y_pred = ops.clip(y_pred, EPSILON, 1.0)
    return ops.sum(y_true * ops.log(y_true / y_pred), axis=-1)


def poisson(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    return ops.mean(y_pred - y_true * ops.log(y_pred + EPSILON), axis=-1)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    _check_same_shape("binary_crossentropy", y_true, y_pred)
    logits = logits_behind(y_pred, "sigmoid")
    if logits is not None:
        if from_logits:
            warnings.warn("binary_crossentropy received from_logits=True, but y_pred was produced by a "
                          "sigmoid and thus does not represent logits", stacklevel=2)
        y_pred, from_logits = logits, True
    if from_logits:
        # TensorFlow's sigmoid_cross_entropy_with_logits: max(x, 0) - x*z + log1p(exp(-|x|)).
        positive = ops.greater_equal(y_pred, 0.0)
        relu_logits = ops.where(positive, y_pred, 0.0)
        neg_abs_logits = ops.where(positive, -y_pred, y_pred)
        values = relu_logits - y_pred * y_true + ops.log1p(ops.exp(neg_abs_logits))
    else:
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        values = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(values, axis=axis)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    if isinstance(axis, bool):
        raise ValueError(f"categorical_crossentropy: `axis` must be an int, got {axis!r}")
    y_true, y_pred = _pair(y_true, y_pred, squeeze=False)
    if len(y_pred.shape) < 1:
        raise ShapeError("categorical_crossentropy: y_true and y_pred must have rank >= 1; got shapes "
                         f"{fmt_shape(y_true.shape)} and {fmt_shape(y_pred.shape)}")
    if y_pred.shape[-1] == 1:
        warnings.warn(f"In loss categorical_crossentropy, expected y_pred.shape to be (batch_size, num_classes) "
                      f"with num_classes > 1. Received: y_pred.shape={fmt_shape(y_pred.shape)}. Consider using "
                      "'binary_crossentropy' if you only have 2 classes.", SyntaxWarning, stacklevel=2)
    _check_same_shape("categorical_crossentropy", y_true, y_pred)
    if label_smoothing:
        num_classes = y_true.shape[-1]
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / num_classes
    logits = logits_behind(y_pred, "softmax", axis)
    if logits is not None:
        if from_logits:
            warnings.warn("categorical_crossentropy received from_logits=True, but y_pred was produced by a "
                          "softmax and thus does not represent logits", stacklevel=2)
        y_pred, from_logits = logits, True
    if from_logits:
        return -ops.sum(y_true * ops.log_softmax(y_pred, axis=axis), axis=axis)
    output = y_pred / ops.sum(y_pred, axis=axis, keepdims=True)
    output = ops.clip(output, EPSILON, 1.0 - EPSILON)
    return -ops.sum(y_true * ops.log(output), axis=axis)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    y_pred = as_tensor(y_pred, "float32")
    y_true = as_tensor(y_true)
    rank = len(y_pred.shape)
    if axis not in (-1, rank - 1):
        raise ValueError(f"sparse_categorical_crossentropy: only axis=-1 is supported, got axis={axis}")
    if len(y_true.shape) == rank and rank > 0 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    t, p = tuple(y_true.shape), tuple(y_pred.shape)
    if rank < 1 or len(t) != rank - 1 or any(a is not None and c is not None and a != c
                                             for a, c in zip(t, p[:-1])):
        raise ShapeError("sparse_categorical_crossentropy: y_true must hold one integer class index per "
                         f"row of y_pred, i.e. have shape {fmt_shape(p[:-1])} or {fmt_shape(p[:-1] + (1,))} for "
                         f"y_pred of shape {fmt_shape(p)}; got y_true of shape {fmt_shape(t)}")
    labels = cast(y_true, "int32")
    valid = None
    if ignore_class is not None:
        valid = ops.not_equal(labels, int(ignore_class))
        labels = labels * ops.cast(valid, "int32")
        y_pred = ops.where(ops.expand_dims(valid, -1), y_pred, 0.0)
    logits = logits_behind(y_pred, "softmax")
    if logits is not None:
        y_pred, from_logits = logits, True
    if not from_logits:
        # TensorFlow feeds log(clip(p)) as logits to its sparse softmax crossentropy.
        y_pred = ops.log(ops.clip(y_pred, EPSILON, 1.0 - EPSILON))
    log_probs = ops.log_softmax(y_pred, axis=-1)
    # A label outside the classes stops the step, as TensorFlow's kernel does on the CPU.
    labels = backend.apply_op("check_index", [labels], limit=int(p[-1]), what="sparse_categorical_crossentropy")
    values = -ops.sum(ops.one_hot(labels, p[-1]) * log_probs, axis=-1)
    if valid is not None:
        values = ops.where(valid, values, 0.0)
        values._keras_mask = valid
    return values


# ---- loss classes -----------------------------------------------------------------------

def _wrapper_class(class_name, fn, default_name, arg_names=()):
    """A LossFunctionWrapper subclass with Keras's constructor: (*arg_names, reduction, name, dtype)."""
    order = tuple(arg_names) + ("reduction", "name", "dtype")

    def __init__(self, *args, **kwargs):
        if len(args) > len(order):
            raise TypeError(f"{class_name}() takes at most {len(order)} positional arguments")
        params = dict(DEFAULTS[class_name], reduction="sum_over_batch_size", name=default_name, dtype=None)
        unknown = set(kwargs) - set(params)
        if unknown:
            raise TypeError(f"{class_name}: unexpected keyword argument(s) {sorted(unknown)}")
        params.update(zip(order, args))
        params.update(kwargs)
        base = {k: params.pop(k) for k in ("reduction", "name", "dtype")}
        LossFunctionWrapper.__init__(self, fn, **base, **params)
        for k, v in params.items():
            setattr(self, k, v)

    return type(class_name, (LossFunctionWrapper,), {"__init__": __init__, "__module__": __name__,
                                                     "__doc__": f"Loss class of ``{fn.__name__}``."})


DEFAULTS = {
    "MeanSquaredError": {}, "MeanAbsoluteError": {}, "MeanAbsolutePercentageError": {},
    "MeanSquaredLogarithmicError": {}, "CosineSimilarity": {"axis": -1}, "Huber": {"delta": 1.0},
    "LogCosh": {}, "Hinge": {}, "SquaredHinge": {}, "CategoricalHinge": {}, "KLDivergence": {}, "Poisson": {},
    "BinaryCrossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "CategoricalCrossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
}

MeanSquaredError = _wrapper_class("MeanSquaredError", mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _wrapper_class("MeanAbsoluteError", mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _wrapper_class("MeanAbsolutePercentageError", mean_absolute_percentage_error,
                                             "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _wrapper_class("MeanSquaredLogarithmicError", mean_squared_logarithmic_error,
                                             "mean_squared_logarithmic_error")
CosineSimilarity = _wrapper_class("CosineSimilarity", cosine_similarity, "cosine_similarity", ("axis",))
Huber = _wrapper_class("Huber", huber, "huber_loss", ("delta",))
LogCosh = _wrapper_class("LogCosh", log_cosh, "log_cosh")
Hinge = _wrapper_class("Hinge", hinge, "hinge")
SquaredHinge = _wrapper_class("SquaredHinge", squared_hinge, "squared_hinge")
CategoricalHinge = _wrapper_class("CategoricalHinge", categorical_hinge, "categorical_hinge")
KLDivergence = _wrapper_class("KLDivergence", kl_divergence, "kl_divergence")
Poisson = _wrapper_class("Poisson", poisson, "poisson")
BinaryCrossentropy = _wrapper_class("BinaryCrossentropy", binary_crossentropy, "binary_crossentropy",
                                    ("from_logits", "label_smoothing", "axis"))
CategoricalCrossentropy = _wrapper_class("CategoricalCrossentropy", categorical_crossentropy,
                                         "categorical_crossentropy", ("from_logits", "label_smoothing", "axis"))


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Crossentropy between integer class labels, shape (B,) or (B, 1), and (B, C) predictions."""
    _integer_labels = True

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size", axis=-1,
                 name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, ignore_class=ignore_class, axis=axis)
        self.from_logits, self.ignore_class, self.axis = from_logits, ignore_class, axis

    def call(self, y_true, y_pred):
        # No rank matching here: (B,) labels against (B, C) predictions are the normal case.
        return sparse_categorical_crossentropy(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "from_logits": self.from_logits,
                "ignore_class": self.ignore_class}


# ---- names ------------------------------------------------------------------------------

_CLASSES = [MeanSquaredError, MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredLogarithmicError,
            CosineSimilarity, Huber, LogCosh, Hinge, SquaredHinge, CategoricalHinge, KLDivergence, Poisson,
            BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy, Loss,
            LossFunctionWrapper]
_FUNCTIONS = [mean_squared_error, mean_absolute_error, mean_absolute_percentage_error,
              mean_squared_logarithmic_error, cosine_similarity, huber, log_cosh, hinge, squared_hinge,
              categorical_hinge, kl_divergence, poisson, binary_crossentropy, categorical_crossentropy,
              sparse_categorical_crossentropy]

ALL_OBJECTS = {c.__name__: c for c in _CLASSES}
ALL_OBJECTS.update({f.__name__: f for f in _FUNCTIONS})
ALL_OBJECTS.update({
    "mse": mean_squared_error, "MSE": mean_squared_error, "mae": mean_absolute_error, "MAE": mean_absolute_error,
    "mape": mean_absolute_percentage_error, "MAPE": mean_absolute_percentage_error,
    "msle": mean_squared_logarithmic_error, "MSLE": mean_squared_logarithmic_error,
    "bce": binary_crossentropy, "BCE": binary_crossentropy, "kld": kl_divergence, "KLD": kl_divergence,
    "kullback_leibler_divergence": kl_divergence, "logcosh": log_cosh, "huber_loss": huber,
})

# Aliases of the function forms, as tf.keras exports them.
mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
mape = MAPE = mean_absolute_percentage_error
msle = MSLE = mean_squared_logarithmic_error
kld = KLD = kullback_leibler_divergence = kl_divergence
logcosh = log_cosh


def serialize(loss):
    """tf.keras 2's form: a function by its name, a Loss as {'class_name', 'config'}."""
    if isinstance(loss, Loss):
        return {"class_name": type(loss).__name__, "config": loss.get_config()}
    if callable(loss) and getattr(loss, "__name__", None):
        return loss.__name__
    raise ValueError(f"Cannot serialize loss {loss!r}: expected a Loss or a loss function")


def deserialize(config, custom_objects=None):
    objects = dict(ALL_OBJECTS, **(custom_objects or {}))
    if isinstance(config, str):
        return get(config) if config in objects else _unknown(config)
    name = config.get("class_name")
    cls = objects.get(name)
    if cls is None:
        _unknown(name)
    if not inspect.isclass(cls):
        return cls
    return cls.from_config(config.get("config", {}))


def _unknown(identifier):
    names = sorted(k for k in ALL_OBJECTS if k not in ("Loss", "LossFunctionWrapper"))
    raise ValueError(f"Could not interpret loss identifier: {identifier!r}. Known losses: {', '.join(names)}")


def get(identifier):
    """A loss from a name (a function for function names, an instance for class names), a config
    dict, a Loss class or instance, or a function (returned as it is), as keras.losses.get."""
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        return deserialize(identifier)
    obj = ALL_OBJECTS.get(identifier, None) if isinstance(identifier, str) else identifier
    if obj is None:
        _unknown(identifier)
    if inspect.isclass(obj):
        return obj()
    if callable(obj):
        return obj
    _unknown(identifier)


def resolve_loss(identifier):
    """A Loss object for ``compile(loss=...)``: functions (named or user-written with keras.ops) are
    wrapped in a LossFunctionWrapper named after the identifier, as Keras's compile does."""
    loss = get(identifier)
    if loss is None or isinstance(loss, Loss):
        return loss
    name = identifier if isinstance(identifier, str) else getattr(loss, "__name__", None)
    return LossFunctionWrapper(loss, name=name)
