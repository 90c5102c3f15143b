"""Intersection-over-union metrics (IoU, MeanIoU, BinaryIoU, OneHotIoU, OneHotMeanIoU), as Keras 3.

The state is a (num_classes, num_classes) confusion matrix of int32 counts (rows: labels,
columns: predictions), Keras's default dtype for these metrics; sample weights are cast to
int32 as Keras casts them. ``result`` is the mean IoU over the target classes that occur.
"""
import numpy as np

from .. import ops
from ..losses import EPSILON, as_tensor, cast
from . import Metric, read


class _IoUBase(Metric):
    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_true=True,
                 sparse_y_pred=True, axis=-1):
        super().__init__(name=name, dtype=dtype or "int")
        self.num_classes, self.ignore_class = int(num_classes), ignore_class
        self.sparse_y_true, self.sparse_y_pred, self.axis = sparse_y_true, sparse_y_pred, axis
        self.total_cm = self.add_variable(name="total_confusion_matrix", shape=(num_classes, num_classes),
                                          initializer="zeros", dtype=self.dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = as_tensor(y_true), as_tensor(y_pred)
        if not self.sparse_y_true:
            y_true = ops.argmax(y_true, axis=self.axis)
        if not self.sparse_y_pred:
            y_pred = ops.argmax(y_pred, axis=self.axis)
        y_true, y_pred = cast(y_true, self.dtype), cast(y_pred, self.dtype)
        if len(y_pred.shape) > 1:
            y_pred = ops.reshape(y_pred, (-1,))
        if len(y_true.shape) > 1:
            y_true = ops.reshape(y_true, (-1,))
        weight = 1.0
        if sample_weight is not None:  # truncated to the state's integer dtype, as Keras does
            weight = cast(cast(as_tensor(sample_weight), self.dtype), "float32")
            if len(weight.shape) > 1:
                weight = ops.reshape(weight, (-1,))
        n = self.num_classes
        in_bounds = ops.logical_and(
            ops.logical_and(ops.greater_equal(y_true, 0), ops.less(y_true, n)),
            ops.logical_and(ops.greater_equal(y_pred, 0), ops.less(y_pred, n)))
        if self.ignore_class is not None:
            in_bounds = ops.logical_and(in_bounds, ops.not_equal(y_true, int(self.ignore_class)))
        weight = ops.where(in_bounds, weight, 0.0)
        classes = np.arange(n, dtype=np.int32)
        true_hot = ops.cast(ops.equal(ops.expand_dims(cast(y_true, "int32"), -1), classes), "float32")
        pred_hot = ops.cast(ops.equal(ops.expand_dims(cast(y_pred, "int32"), -1), classes), "float32")
        # cm[i, j] = sum of the weights of samples labelled i and predicted j
        pairs = ops.expand_dims(true_hot * ops.expand_dims(weight, -1), -1) * ops.expand_dims(pred_hot, 1)
        self.assign_add(self.total_cm, cast(ops.sum(pairs, axis=0), self.dtype))

    def reset_state(self):
        self.total_cm.assign(np.zeros(self.total_cm.shape, self.total_cm.dtype))


class IoU(_IoUBase):
    """IoU = TP / (TP + FP + FN), averaged over ``target_class_ids`` (classes that occur)."""

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        super().__init__(num_classes=num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred, axis=axis)
        if max(target_class_ids) >= num_classes:
            raise ValueError(f"Target class id {max(target_class_ids)} is out of range, which is "
                             f"[0, {num_classes}).")
        self.target_class_ids = list(target_class_ids)

    def result(self):
        cm = cast(read(self.total_cm), "float32")
        true_positives = ops.sum(cm * np.eye(self.num_classes, dtype=np.float32), axis=1)
        denominator = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - true_positives
        # Each target id counts as often as it is listed, as Keras's take_along_axis picks it.
        multiplicity = np.bincount(self.target_class_ids, minlength=self.num_classes).astype(np.float32)
        valid = ops.cast(ops.greater(denominator, 1e-9), "float32") * multiplicity
        iou = ops.where(ops.greater(valid, 0.0), true_positives / (denominator + EPSILON) * multiplicity, 0.0)
        return ops.divide(ops.sum(iou), ops.sum(valid) + EPSILON)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes, target_class_ids=self.target_class_ids,
                    ignore_class=self.ignore_class, sparse_y_true=self.sparse_y_true,
                    sparse_y_pred=self.sparse_y_pred, axis=self.axis)


class BinaryIoU(IoU):
    """IoU of two classes, the prediction being 1 where y_pred >= ``threshold``."""

    def __init__(self, target_class_ids=(0, 1), threshold=0.5, name=None, dtype=None):
        super().__init__(num_classes=2, target_class_ids=target_class_ids, name=name, dtype=dtype)
        self.threshold = threshold

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = cast(as_tensor(y_true), self.dtype)
        y_pred = ops.cast(ops.greater_equal(as_tensor(y_pred, "float32"), float(self.threshold)), self.dtype)
        IoU.update_state(self, y_true, y_pred, sample_weight)

    def get_config(self):
        return {"target_class_ids": self.target_class_ids, "threshold": self.threshold, "name": self.name,
                "dtype": self.dtype}


class MeanIoU(IoU):
    """The mean IoU over all ``num_classes`` classes."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_true=True,
                 sparse_y_pred=True, axis=-1):
        super().__init__(num_classes=num_classes, target_class_ids=list(range(num_classes)), name=name,
                         dtype=dtype, ignore_class=ignore_class, sparse_y_true=sparse_y_true,
                         sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype,
                "ignore_class": self.ignore_class, "sparse_y_true": self.sparse_y_true,
                "sparse_y_pred": self.sparse_y_pred, "axis": self.axis}


class OneHotIoU(IoU):
    """IoU with one-hot labels (and by default class scores as predictions)."""

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes=num_classes, target_class_ids=target_class_ids, name=name, dtype=dtype,
                         ignore_class=ignore_class, sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        return {"num_classes": self.num_classes, "target_class_ids": self.target_class_ids, "name": self.name,
                "dtype": self.dtype, "ignore_class": self.ignore_class, "sparse_y_pred": self.sparse_y_pred,
                "axis": self.axis}


class OneHotMeanIoU(MeanIoU):
    """MeanIoU with one-hot labels (and by default class scores as predictions)."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_pred=False, axis=-1):
        super().__init__(num_classes=num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype,
                "ignore_class": self.ignore_class, "sparse_y_pred": self.sparse_y_pred, "axis": self.axis}
