"""keras.Variable: a named, numpy-held value that traced graphs read as a variable node."""
import itertools

import numpy as np

from .tensor import KerasTensor, to_array

_uids = itertools.count()


class Variable(KerasTensor):
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
        return self._value

    @property
    def value(self):
        return self._value

    def assign(self, value):
        value = to_array(value, dtype=self.dtype)
        if value.shape != self._value.shape:
            raise ValueError(f"Variable {self.path!r}: cannot assign a value of shape {value.shape} "
                             f"to a variable of shape {self._value.shape}")
        self._value[...] = value  # in place: compiled programs hold this buffer's address

    def __float__(self):
        return float(self._value)

    def __int__(self):
        return int(self._value)

    def __array__(self, dtype=None, copy=None):
        return self._value if dtype is None else self._value.astype(dtype)

    def __repr__(self):
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}, value={self._value!r}>"

    __hash__ = object.__hash__
