"""The monitored-quantity logic that EarlyStopping and ModelCheckpoint share (Keras 3's
MonitorCallback): which direction is an improvement, and by how much."""
import warnings

from .callback import Callback

_MAXIMIZED = ("acc", "precision", "recall", "auc", "true_positives", "true_negatives", "fmeasure")


class MonitorCallback(Callback):
    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto mode.", stacklevel=2)
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self.monitor_op = None

    def _set_monitor_op(self):
        """'min'/'max' as given; 'auto' decides from the name: the loss and error metrics fall,
        accuracies (and other metrics whose name says they rise) rise, as tf.keras infers."""
        if self.mode == "min":
            maximize = False
        elif self.mode == "max":
            maximize = True
        else:
            name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
            entries = getattr(self.model, "compiled_metric_entries", None) or ()  # by log name: cls_accuracy
            metric = next((e.metric for e in entries if e.log_name == name), None)
            direction = getattr(metric, "_direction", None)
            maximize = direction == "up" if direction else (
                name != "loss" and any(word in name for word in _MAXIMIZED))
        self.monitor_op = (lambda a, b: a > b) if maximize else (lambda a, b: a < b)
        if not maximize:
            self.min_delta = -abs(self.min_delta)

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        return self.monitor_op(monitor_value - self.min_delta, reference_value)
