"""keras.callbacks.Callback: the hooks fit, evaluate and predict call, in Keras's order.

fit: on_train_begin; per epoch on_epoch_begin, per batch on_train_batch_begin/end,
validation (on_test_begin, on_test_batch_begin/end, on_test_end), on_epoch_end;
on_train_end. evaluate: on_test_begin, test batches, on_test_end. predict likewise
with the on_predict_* hooks. ``on_batch_begin``/``on_batch_end`` are tf.keras's old
names: the default training batch hooks call them, so overriding either works.
"""


class Callback:
    # Under data-parallel training, whether only rank 0 runs it (it prints or writes files)
    chief_only = False

    def __init__(self):
        self.validation_data = None
        self.model = None
        self.params = {}

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model

    # ---- batch hooks ----------------------------------------------------------------------

    def on_batch_begin(self, batch, logs=None):
        """Alias of ``on_train_batch_begin`` (tf.keras 1 name, kept for compatibility)."""

    def on_batch_end(self, batch, logs=None):
        """Alias of ``on_train_batch_end`` (tf.keras 1 name, kept for compatibility)."""

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        """``logs``: the running means of the loss and metrics over the epoch so far."""
        self.on_batch_end(batch, logs)

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        """``logs['outputs']``: this batch's predictions."""

    # ---- epoch and run hooks --------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        """``logs``: the epoch's means, and the validation results with a ``val_`` prefix."""

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass
