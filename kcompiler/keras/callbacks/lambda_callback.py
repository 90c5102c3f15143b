"""keras.callbacks.LambdaCallback: a callback built from plain functions.

``on_epoch_begin``/``on_epoch_end`` take (epoch, logs); the batch hooks (batch, logs);
``on_train_begin``/``on_train_end`` take (logs). tf.keras's ``on_batch_begin``/
``on_batch_end`` are the training batch hooks; other hooks may be given as keyword
arguments (``on_test_end=...``), as Keras allows.
"""
from .callback import Callback


class LambdaCallback(Callback):
    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_batch_begin=None, on_batch_end=None,
                 on_train_begin=None, on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_batch_begin=on_batch_begin,
                     on_batch_end=on_batch_end, on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin, on_train_batch_end=on_train_batch_end, **kwargs)
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not (name.startswith("on_") and hasattr(Callback, name)):
                raise TypeError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)
