"""keras.callbacks.ProgbarLogger: prints the progress bar (runtime/progbar.py) for fit,
evaluate and predict, as tf.keras 2 does.

fit prints ``Epoch i/N`` (when N > 1), one bar per epoch finished with the epoch's and
the validation's values; validation inside fit prints nothing. evaluate and predict
print a bar of their own. verbose=2 prints one line per epoch (or evaluate call).
"""
from ...runtime.progbar import Progbar
from .callback import Callback


class ProgbarLogger(Callback):
    chief_only = True  # one progress bar per job, rank 0's
    def __init__(self, count_mode="samples", stateful_metrics=None):
        super().__init__()
        if count_mode not in ("samples", "steps"):
            raise ValueError(f"Unknown `count_mode`: {count_mode}. Expected values are ['samples', 'steps']")
        # The loops count steps and pass running means; counting samples is tf.keras 1's mode.
        self.use_steps = True
        self.stateful_metrics = set(stateful_metrics or ())
        self.seen = 0
        self.progbar = None
        self.target = None
        self.verbose = 1
        self.epochs = 1
        self._called_in_fit = False

    def set_params(self, params):
        super().set_params(params)
        self.verbose = params.get("verbose", 1)
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def on_train_begin(self, logs=None):
        self._called_in_fit = True  # validation inside fit is silent

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._start_bar()

    def on_predict_begin(self, logs=None):
        self._start_bar()

    def on_epoch_begin(self, epoch, logs=None):
        self._start_bar()
        if self.verbose and self.epochs > 1:
            Progbar._write(f"Epoch {epoch + 1}/{self.epochs}\n")

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update(batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._update(batch, None)  # predictions are not displayed

    def on_epoch_end(self, epoch, logs=None):
        self._finalize(logs)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._finalize(logs)

    def on_predict_end(self, logs=None):
        self._finalize(None)

    def _start_bar(self):
        self.seen = 0
        # Every value the loops pass is already a mean over the epoch so far: shown as it is.
        self.progbar = Progbar(target=self.target, verbose=self.verbose, unit_name="step",
                               stateful_metrics=_AllNames(self.stateful_metrics))

    def _update(self, batch, logs):
        if self.progbar is None:
            self._start_bar()
        self.seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(self.seen, list(logs.items()) if logs else None, finalize=False)

    def _finalize(self, logs):
        if self.progbar is None:
            self._start_bar()
        if self.target is None:
            self.target = self.progbar.target = self.seen
        self.progbar.update(self.target, list(logs.items()) if logs else None, finalize=True)


class _AllNames(set):
    """A set that contains every name: all values are displayed as given."""

    def __contains__(self, name):
        return True
