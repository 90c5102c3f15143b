"""AUC and the metrics read off a curve of thresholds (PrecisionAtRecall, RecallAtPrecision,
SensitivityAtSpecificity, SpecificityAtSensitivity), as Keras 3 computes them.

Each keeps true/false positive/negative counts per threshold (``confusion_counts``), updated
in the traced step; ``result`` reduces the counts with keras.ops (Riemann sums for AUC, a
constrained maximum for the others).
"""
import numpy as np

from .. import ops
from ..losses import EPSILON
from . import Metric, confusion_counts, read

_AUC_CURVES = ("ROC", "PR", "PRGAIN")
_AUC_SUMMATIONS = ("interpolation", "minoring", "majoring")


def _evenly_spaced(thresholds):
    """Keras's is_evenly_distributed_thresholds: 0, 1/(T-1), ..., 1 (T >= 3) within epsilon."""
    n = len(thresholds)
    return n >= 3 and bool(np.allclose(thresholds, np.arange(n, dtype=np.float32) / (n - 1), atol=EPSILON))


def _grid(num_thresholds):
    """The inner thresholds of a grid of ``num_thresholds`` evenly spaced over [0, 1]."""
    return [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]


class _ConfusionCurve(Metric):
    """Counts of the four outcomes per threshold, of shape ``variable_shape``."""

    def _add_counts(self, variable_shape):
        for name in ("true_positives", "false_positives", "true_negatives", "false_negatives"):
            setattr(self, name, self.add_variable(shape=variable_shape, initializer="zeros", name=name))

    def _update_counts(self, y_true, y_pred, sample_weight, **kwargs):
        counts = confusion_counts(["tp", "fp", "tn", "fn"], y_true, y_pred, self._threshold_values,
                                  sample_weight=sample_weight, **kwargs)
        for cond, name in (("tp", "true_positives"), ("fp", "false_positives"), ("tn", "true_negatives"),
                           ("fn", "false_negatives")):
            self.assign_add(getattr(self, name), counts[cond])

    def _counts(self):
        return (read(self.true_positives), read(self.false_positives), read(self.true_negatives),
                read(self.false_negatives))


class AUC(_ConfusionCurve):
    """Area under the ROC, PR or PR-gain curve, summed over ``num_thresholds`` thresholds."""

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None, dtype=None,
                 thresholds=None, multi_label=False, num_labels=None, label_weights=None, from_logits=False):
        curve, summation_method = str(curve).upper(), str(summation_method).lower()
        if curve not in _AUC_CURVES:
            raise ValueError(f'Invalid `curve` argument value "{curve}". Expected one of: {list(_AUC_CURVES)}')
        if summation_method not in _AUC_SUMMATIONS:
            raise ValueError(f'Invalid `summation_method` argument value "{summation_method}". '
                             f"Expected one of: {list(_AUC_SUMMATIONS)}")
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            self.num_thresholds = len(thresholds) + 2
            thresholds = sorted(float(t) for t in thresholds)
            self._evenly = _evenly_spaced(np.array([0.0] + thresholds + [1.0]))
        else:
            if num_thresholds <= 1:
                raise ValueError("Argument `num_thresholds` must be an integer > 1. "
                                 f"Received: num_thresholds={num_thresholds}")
            self.num_thresholds = int(num_thresholds)
            thresholds = _grid(num_thresholds)
            self._evenly = True
        self._threshold_values = [0.0 - EPSILON] + thresholds + [1.0 + EPSILON]
        self.curve, self.summation_method = curve, summation_method
        super().__init__(name=name, dtype=dtype)
        self.multi_label, self.num_labels = bool(multi_label), num_labels
        self.label_weights = None if label_weights is None else np.asarray(label_weights, np.float32)
        self._from_logits = from_logits
        self._built = False
        if self.multi_label:
            if num_labels:
                self._build((None, num_labels))
        else:
            if num_labels:
                raise ValueError("`num_labels` is needed only when `multi_label` is True.")
            self._build(None)

    @property
    def thresholds(self):
        return list(self._threshold_values)

    def _build(self, shape):
        if self.multi_label:
            if len(shape) != 2:
                raise ValueError("`y_pred` must have rank 2 when `multi_label=True`. "
                                 f"Found rank {len(shape)}. Full shape received for `y_pred`: {shape}")
            self._num_labels = shape[1]
            self._add_counts((self.num_thresholds, self._num_labels))
        else:
            self._add_counts((self.num_thresholds,))
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        if not self._built:
            self._build(tuple(ops.shape(y_pred)))
        if self._from_logits:
            y_pred = ops.sigmoid(y_pred)
        self._update_counts(y_true, y_pred, sample_weight, multi_label=self.multi_label,
                            label_weights=None if self.multi_label else self.label_weights,
                            evenly_spaced=self._evenly, with_epsilon=True)

    def _by_label(self, terms):
        """Sum the area terms over thresholds; with multi_label, average over labels."""
        if not self.multi_label:
            return ops.sum(terms)
        by_label = ops.sum(terms, axis=0)
        if self.label_weights is None:
            return ops.mean(by_label)
        return ops.divide_no_nan(ops.sum(ops.multiply(by_label, self.label_weights)),
                                 np.asarray(np.sum(self.label_weights), np.float32))

    def _interpolate_pr_auc(self, tp, fp, fn):
        """Davis & Goadrich's interpolation of the PR curve between thresholds (Keras's formula)."""
        t = self.num_thresholds
        dtp = tp[: t - 1] - tp[1:]
        p = tp + fp
        dp = p[: t - 1] - p[1:]
        prec_slope = ops.divide_no_nan(dtp, ops.maximum(dp, 0.0))
        intercept = tp[1:] - prec_slope * p[1:]
        both_positive = ops.logical_and(ops.greater(p[: t - 1], 0.0), ops.greater(p[1:], 0.0))
        safe_p_ratio = ops.where(both_positive, ops.divide_no_nan(p[: t - 1], ops.maximum(p[1:], 0.0)), 1.0)
        increment = ops.divide_no_nan(prec_slope * (dtp + intercept * ops.log(safe_p_ratio)),
                                      ops.maximum(tp[1:] + fn[1:], 0.0))
        return self._by_label(increment)

    def result(self):
        tp, fp, tn, fn = self._counts()
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc(tp, fp, fn)
        recall = ops.divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = ops.divide_no_nan(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, ops.divide_no_nan(tp, tp + fp)
        else:  # PRGAIN
            scaling = ops.divide_no_nan(tp + fn, tn + fp)
            recall_gain = 1.0 - scaling * ops.divide_no_nan(fn, tp)
            precision_gain = 1.0 - scaling * ops.divide_no_nan(fp, tp)
            no_tp = ops.equal(tp, 0.0)
            x = ops.maximum(ops.where(no_tp, 0.0, recall_gain), 0.0)
            y = ops.where(no_tp, 1.0, precision_gain)
        t = self.num_thresholds
        if self.summation_method == "interpolation":
            heights = (y[: t - 1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = ops.minimum(y[: t - 1], y[1:])
        else:
            heights = ops.maximum(y[: t - 1], y[1:])
        return self._by_label((x[: t - 1] - x[1:]) * heights)

    def reset_state(self):
        if self._built:
            super().reset_state()

    def get_config(self):
        config = dict(super().get_config(), num_thresholds=self.num_thresholds, curve=self.curve,
                      summation_method=self.summation_method, multi_label=self.multi_label,
                      num_labels=self.num_labels,
                      label_weights=None if self.label_weights is None else self.label_weights.tolist(),
                      from_logits=self._from_logits)
        if self._init_from_thresholds:
            config["thresholds"] = self.thresholds[1:-1]
        return config


class SensitivitySpecificityBase(_ConfusionCurve):
    """Counts over ``num_thresholds`` thresholds (0, ..., 1; or 0.5 alone) and the largest value of
    one rate where another meets ``value``."""

    def __init__(self, value, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if num_thresholds <= 0:
            raise ValueError(f"Argument `num_thresholds` must be an integer > 0. Received: num_thresholds={num_thresholds}")
        self.value, self.class_id = value, class_id
        if num_thresholds == 1:
            self._threshold_values, self._evenly = [0.5], False
        else:
            self._threshold_values, self._evenly = [0.0] + _grid(num_thresholds) + [1.0], True
        self._add_counts((len(self._threshold_values),))

    @property
    def thresholds(self):
        return list(self._threshold_values)

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._update_counts(y_true, y_pred, sample_weight, class_id=self.class_id, evenly_spaced=self._evenly)

    def _find_max_under_constraint(self, constrained, dependent):
        """The largest ``dependent`` value where ``constrained >= value``; 0 when there is none."""
        feasible = ops.greater_equal(constrained, float(self.value))
        return ops.maximum(ops.max(ops.where(feasible, dependent, 0.0)), 0.0)

    def _rates(self):
        tp, fp, tn, fn = self._counts()
        return {"sensitivity": ops.divide_no_nan(tp, tp + fn), "specificity": ops.divide_no_nan(tn, tn + fp),
                "precision": ops.divide_no_nan(tp, tp + fp)}

    def get_config(self):
        return dict(super().get_config(), class_id=self.class_id)


def _at_constraint_class(class_name, value_name, constrained, dependent):
    """A SensitivitySpecificityBase subclass: the largest ``dependent`` rate where the
    ``constrained`` rate is at least the constructor's ``value_name`` argument."""

    def __init__(self, *args, num_thresholds=200, class_id=None, name=None, dtype=None, **kwargs):
        if args:
            kwargs[value_name] = args[0]
        if set(kwargs) != {value_name}:
            raise TypeError(f"{class_name}() takes the argument `{value_name}`; received {sorted(kwargs)}")
        value = kwargs[value_name]
        if not 0 <= value <= 1:
            raise ValueError(f"Argument `{value_name}` must be in the range [0, 1]. Received: {value_name}={value}")
        setattr(self, value_name, value)
        self.num_thresholds = num_thresholds
        SensitivitySpecificityBase.__init__(self, value, num_thresholds=num_thresholds, class_id=class_id,
                                            name=name, dtype=dtype)

    def result(self):
        rates = self._rates()
        return self._find_max_under_constraint(rates[constrained], rates[dependent])

    def get_config(self):
        return dict(SensitivitySpecificityBase.get_config(self), num_thresholds=self.num_thresholds,
                    **{value_name: getattr(self, value_name)})

    return type(class_name, (SensitivitySpecificityBase,),
                {"__init__": __init__, "result": result, "get_config": get_config, "__module__": __name__,
                 "__doc__": f"The largest {dependent} over thresholds where {constrained} >= `{value_name}`."})


SensitivityAtSpecificity = _at_constraint_class("SensitivityAtSpecificity", "specificity", "specificity",
                                                "sensitivity")
SpecificityAtSensitivity = _at_constraint_class("SpecificityAtSensitivity", "sensitivity", "sensitivity",
                                                "specificity")
PrecisionAtRecall = _at_constraint_class("PrecisionAtRecall", "recall", "sensitivity", "precision")
RecallAtPrecision = _at_constraint_class("RecallAtPrecision", "precision", "precision", "sensitivity")
