"""keras.Variable: a named, numpy-held value that traced graphs read as a variable node.

A device backend may keep the current value on its device (kcompiler/codegen/residence.py):
then ``_device_copy`` is set, every host read goes through ``numpy()`` (which first fetches a
newer device value) and every host write through ``assign`` (which marks the device copy
stale)."""
import itertools

import numpy as np

from .tensor import KerasTensor, to_array

_uids = itertools.count()


class Variable(KerasTensor):
    _device_copy = None  # the value a device keeps (codegen/residence.py), or None
    # True for state whose reads in a trace follow the trace's own assignments (metric state,
    # keras.metrics.MetricVariable); weights and optimizer slots are read as the step found them.
    reads_pending_update = False

    def __init__(self, initializer=None, shape=None, dtype="float32", trainable=True, name="variable",
                 path=None, constraint=None, regularizer=None):
        from . import initializers
        if initializer is None:
            raise ValueError(f"Variable {name!r}: an initial value or initializer is required")
        if callable(initializer) and not isinstance(initializer, np.ndarray):
            if shape is None:
                raise ValueError(f"Variable {name!r}: an initializer needs a shape")
            value = initializers.get(initializer)(tuple(shape), dtype=dtype)
        elif isinstance(initializer, str):
            value = initializers.get(initializer)(tuple(shape), dtype=dtype)
        else:
            value = to_array(initializer, dtype=dtype)
        self._value = np.asarray(value, dtype=dtype, order="C")  # keeps 0-d shapes
        self.name = name
        self.path = path or name
        self.trainable = trainable
        self.constraint = constraint
        self.regularizer = regularizer
        self.uid = next(_uids)

    @property
    def shape(self):
        return tuple(self._value.shape)

    @property
    def dtype(self):
        return str(self._value.dtype)

    def numpy(self):
        if self._device_copy is not None:
            self._device_copy.host_read()
        return self._value

    @property
    def value(self):
        return self.numpy()

    def assign(self, value):
        value = to_array(value, dtype=self.dtype)
        if value.shape != self._value.shape:
            raise ValueError(f"Variable {self.path!r}: cannot assign a value of shape {value.shape} "
                             f"to a variable of shape {self._value.shape}")
        self._value[...] = value  # in place: compiled programs hold this buffer's address
        if self._device_copy is not None:
            self._device_copy.host_written()

    def __float__(self):
        return float(self.numpy())

    def __int__(self):
        return int(self.numpy())

    def __array__(self, dtype=None, copy=None):
        return self.numpy() if dtype is None else self.numpy().astype(dtype)

    def __repr__(self):
        """As the seed shows tf.keras 2 printing a weight, under kcompiler's name:
        ``<kcompiler.Variable 'layer1/kernel:0' shape=(4, 5) dtype=float32, numpy=...>``."""
        text = repr(self.numpy()) if self._value.ndim else str(self.numpy()[()])
        if "\n" in text:
            text = "\n" + text
        return f"<kcompiler.Variable '{self.path}:0' shape={self.shape} dtype={self.dtype}, numpy={text}>"

    __hash__ = object.__hash__
