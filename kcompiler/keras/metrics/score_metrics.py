"""F-scores (FBetaScore, F1Score) and R2Score, as Keras 3.

Both build their state on the first update, from the number of classes (y_pred's last
dimension, which must be static); the state variables are then created inside that update's
trace, as Keras creates them in its first ``update_state``.
"""
import warnings

from .. import ops
from ..losses import EPSILON, as_tensor, cast, squeeze_or_expand_to_same_rank
from ..tensor import is_symbolic
from . import Metric, _ones_like, read


def _check_2d(metric, y_true_shape, y_pred_shape):
    if len(y_pred_shape) != 2 or len(y_true_shape) != 2:
        raise ValueError(f"{type(metric).__name__} expects 2D inputs with shape (batch_size, output_dim). "
                         f"Received input shapes: y_pred.shape={tuple(y_pred_shape)} and "
                         f"y_true.shape={tuple(y_true_shape)}.")
    if y_pred_shape[-1] is None or y_true_shape[-1] is None:
        raise ValueError(f"{type(metric).__name__} expects 2D inputs with shape (batch_size, output_dim), with "
                         f"output_dim fully defined (not None). Received input shapes: "
                         f"y_pred.shape={tuple(y_pred_shape)} and y_true.shape={tuple(y_true_shape)}.")


class FBetaScore(Metric):
    """F-beta from precision and recall per class; ``average`` None, 'micro', 'macro' or 'weighted'."""

    def __init__(self, average=None, beta=1.0, threshold=None, name="fbeta_score", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError("Invalid `average` argument value. Expected one of: {None, 'micro', 'macro', "
                             f"'weighted'}}. Received: average={average}")
        if not isinstance(beta, float):
            raise ValueError(f"Invalid `beta` argument value. It should be a Python float. Received: beta={beta} "
                             f"of type '{type(beta)}'")
        if beta <= 0.0:
            raise ValueError(f"Invalid `beta` argument value. It should be > 0. Received: beta={beta}")
        if threshold is not None:
            if not isinstance(threshold, float):
                raise ValueError("Invalid `threshold` argument value. It should be a Python float. "
                                 f"Received: threshold={threshold} of type '{type(threshold)}'")
            if threshold > 1.0 or threshold <= 0.0:
                raise ValueError("Invalid `threshold` argument value. It should verify 0 < threshold <= 1. "
                                 f"Received: threshold={threshold}")
        self.average, self.beta, self.threshold = average, beta, threshold
        self.axis = None if average == "micro" else 0
        self._built = False

    def _build(self, y_true_shape, y_pred_shape):
        _check_2d(self, y_true_shape, y_pred_shape)
        shape = () if self.average == "micro" else (y_pred_shape[-1],)
        for name in ("true_positives", "false_positives", "false_negatives", "intermediate_weights"):
            setattr(self, name, self.add_variable(shape=shape, initializer="zeros", name=name))
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = as_tensor(y_true, self.dtype), as_tensor(y_pred, self.dtype)
        if not self._built:
            self._build(y_true.shape, y_pred.shape)
        if self.threshold is None:
            # the row's largest score is the predicted class (none for an all-zero row)
            top = ops.max(y_pred, axis=-1, keepdims=True)
            y_pred = ops.logical_and(ops.greater_equal(y_pred, top), ops.greater(ops.abs(y_pred), 1e-9))
        else:
            y_pred = ops.greater(y_pred, self.threshold)
        y_pred, y_true = ops.cast(y_pred, self.dtype), cast(y_true, self.dtype)
        weight = None if sample_weight is None else ops.expand_dims(as_tensor(sample_weight, self.dtype), 1)

        def weighted_sum(value):
            if weight is not None:
                value = value * weight
            return ops.sum(value, axis=self.axis)

        self.assign_add(self.true_positives, weighted_sum(y_pred * y_true))
        self.assign_add(self.false_positives, weighted_sum(y_pred * (1.0 - y_true)))
        self.assign_add(self.false_negatives, weighted_sum((1.0 - y_pred) * y_true))
        self.assign_add(self.intermediate_weights, weighted_sum(y_true))

    def result(self):
        tp, fp, fn = read(self.true_positives), read(self.false_positives), read(self.false_negatives)
        precision = tp / (tp + fp + EPSILON)
        recall = tp / (tp + fn + EPSILON)
        beta2 = self.beta ** 2
        score = precision * recall / (beta2 * precision + recall + EPSILON) * (1 + beta2)
        if self.average == "weighted":
            weights = read(self.intermediate_weights)
            return ops.sum(score * (weights / (ops.sum(weights) + EPSILON)))
        if self.average is not None:
            return ops.mean(score)
        return score

    def reset_state(self):
        if self._built:
            super().reset_state()

    def get_config(self):
        return dict(super().get_config(), beta=self.beta, average=self.average, threshold=self.threshold)


class F1Score(FBetaScore):
    """FBetaScore with beta = 1."""

    def __init__(self, average=None, threshold=None, name="f1_score", dtype=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        del config["beta"]
        return config


_R2_AGGREGATIONS = (None, "uniform_average", "variance_weighted_average")


class R2Score(Metric):
    """The coefficient of determination per output, aggregated over outputs; ``num_regressors``
    gives the adjusted R2 (the plain R2 while there are too few samples, where Keras warns)."""

    def __init__(self, class_aggregation="uniform_average", num_regressors=0, name="r2_score", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if class_aggregation not in _R2_AGGREGATIONS:
            raise ValueError("Invalid value for argument `class_aggregation`. Expected one of "
                             f"{_R2_AGGREGATIONS}. Received: class_aggregation={class_aggregation}")
        if num_regressors < 0:
            raise ValueError("Invalid value for argument `num_regressors`. Expected a value >= 0. "
                             f"Received: num_regressors={num_regressors}")
        self.class_aggregation, self.num_regressors = class_aggregation, num_regressors
        self.num_samples = self.add_variable(shape=(), initializer="zeros", name="num_samples")
        self._built = False

    def _build(self, y_true_shape, y_pred_shape):
        _check_2d(self, y_true_shape, y_pred_shape)
        n = y_pred_shape[-1]
        self.squared_sum = self.add_variable(name="squared_sum", shape=(n,), initializer="zeros")
        self.sum = self.add_variable(name="sum", shape=(n,), initializer="zeros")
        self.total_mse = self.add_variable(name="residual", shape=(n,), initializer="zeros")
        self.count = self.add_variable(name="count", shape=(n,), initializer="zeros")
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = squeeze_or_expand_to_same_rank(as_tensor(y_true, self.dtype), as_tensor(y_pred, self.dtype))
        if not self._built:
            self._build(y_true.shape, y_pred.shape)
        if sample_weight is None:
            weight = _ones_like(y_true)
        else:
            weight = as_tensor(sample_weight, self.dtype)
            if len(weight.shape) == 1:
                weight = ops.expand_dims(weight, 1)
            weight = ops.where(True, weight, y_true)  # broadcast to y_true's shape
        weighted_y_true = y_true * weight
        self.assign_add(self.sum, ops.sum(weighted_y_true, axis=0))
        self.assign_add(self.squared_sum, ops.sum(y_true * weighted_y_true, axis=0))
        self.assign_add(self.total_mse, ops.sum(ops.square(y_true - y_pred) * weight, axis=0))
        self.assign_add(self.count, ops.sum(weight, axis=0))
        self.assign_add(self.num_samples, ops.sum(_ones_like(y_true)))

    def result(self):
        total_sum, count = read(self.sum), read(self.count)
        mean = total_sum / count
        total = read(self.squared_sum) - total_sum * mean
        raw_scores = 1.0 - read(self.total_mse) / total
        raw_scores = ops.where(ops.equal(ops.abs(raw_scores), float("inf")), 0.0, raw_scores)
        if self.class_aggregation == "uniform_average":
            r2 = ops.mean(raw_scores)
        elif self.class_aggregation == "variance_weighted_average":
            r2 = ops.sum(total * raw_scores) / ops.sum(total)
        else:
            r2 = raw_scores
        if self.num_regressors == 0:
            return r2
        n, p = read(self.num_samples), float(self.num_regressors)
        if not is_symbolic(n) and p >= float(n) - 1:
            warnings.warn(f"More independent predictors than datapoints in adjusted R2 score "
                          f"({p} >= {float(n)} - 1): the plain R2 score is returned.", stacklevel=2)
        adjusted = 1.0 - (1.0 - r2) * (n - 1.0) / (n - p - 1.0)
        return ops.where(ops.less(p, n - 1.0), adjusted, r2)

    def get_config(self):
        return dict(super().get_config(), class_aggregation=self.class_aggregation,
                    num_regressors=self.num_regressors)
