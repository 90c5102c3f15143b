"""Tensors of the front end.

``SymbolicTensor``: a node of a graph being traced (shape may hold None).
``Tensor``: a concrete value, what eager calls return (``.numpy()``, ``.shape``, ``.dtype``).
Both take Python arithmetic operators, which dispatch to ``keras.ops``.
"""
import numpy as np

from ..ir.types import fmt_shape
from ..runtime.data import as_numbers, to_array  # noqa: F401  (re-exported: the front end's conversions)


class KerasTensor:
    """Operator overloads shared by symbolic and concrete tensors (and variables)."""

    def _ops(self):
        from . import ops
        return ops

    def __add__(self, o): return self._ops().add(self, o)
    def __radd__(self, o): return self._ops().add(o, self)
    def __sub__(self, o): return self._ops().subtract(self, o)
    def __rsub__(self, o): return self._ops().subtract(o, self)
    def __mul__(self, o): return self._ops().multiply(self, o)
    def __rmul__(self, o): return self._ops().multiply(o, self)
    def __truediv__(self, o): return self._ops().divide(self, o)
    def __rtruediv__(self, o): return self._ops().divide(o, self)
    def __pow__(self, o): return self._ops().power(self, o)
    def __rpow__(self, o): return self._ops().power(o, self)
    def __matmul__(self, o): return self._ops().matmul(self, o)
    def __rmatmul__(self, o): return self._ops().matmul(o, self)
    def __neg__(self): return self._ops().negative(self)
    def __abs__(self): return self._ops().abs(self)
    def __gt__(self, o): return self._ops().greater(self, o)
    def __ge__(self, o): return self._ops().greater_equal(self, o)
    def __lt__(self, o): return self._ops().less(self, o)
    def __le__(self, o): return self._ops().less_equal(self, o)

    def __getitem__(self, index):
        return self._ops().getitem(self, index)

    @property
    def ndim(self):
        return len(self.shape)


class SymbolicTensor(KerasTensor):
    """Output ``node`` of the graph held by ``builder``."""

    def __init__(self, builder, node):
        self.builder = builder
        self.node = node
        self._keras_history = None  # CallRecord of the layer call that made it (functional API)
        self._keras_mask = None

    @property
    def type(self):
        return self.builder.type(self.node)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __repr__(self):
        return f"<SymbolicTensor shape={fmt_shape(self.shape)}, dtype={self.dtype}, node={self.node}>"

    def __bool__(self):
        raise TypeError("a symbolic tensor has no truth value: Python control flow on traced values "
                        "cannot be compiled; use keras.ops.where")

    def __hash__(self):
        return id(self)


class Tensor(KerasTensor):
    """A concrete float32/int tensor returned by eager calls."""

    def __init__(self, value):
        self._value = value
        self._keras_mask = None

    def numpy(self):
        """The value as numpy holds it: an array, or a numpy scalar for a 0-d tensor (as TensorFlow's
        ``.numpy()`` returns ``np.float32(0.865458)``)."""
        value = self._value
        return value[()] if getattr(value, "ndim", None) == 0 else value

    @property
    def shape(self):
        return tuple(self._value.shape)

    @property
    def dtype(self):
        return str(self._value.dtype)

    def __array__(self, dtype=None, copy=None):
        return self._value if dtype is None else self._value.astype(dtype)

    def __len__(self):
        return len(self._value)

    def __float__(self):
        return float(self._value)

    def __int__(self):
        return int(self._value)

    def __bool__(self):
        return bool(self._value)

    def __repr__(self):
        """As TensorFlow prints an eager tensor (the seed's REPL lines), under kcompiler's name:
        ``<kcompiler.Tensor: shape=(), dtype=float32, numpy=0.865458>``; an array's numpy text
        starts on a line of its own when it spans several."""
        text = _numpy_text(self._value, repr)
        if "\n" in text:
            text = "\n" + text
        return f"<kcompiler.Tensor: shape={self.shape}, dtype={self.dtype}, numpy={text}>"

    def __str__(self):
        """As TensorFlow's ``str(tensor)``: ``kcompiler.Tensor(0.865458, shape=(), dtype=float32)``."""
        return f"kcompiler.Tensor({_numpy_text(self._value, str)}, shape={self.shape}, dtype={self.dtype})"

    def __eq__(self, o):
        return self._ops().equal(self, o)

    def __ne__(self, o):
        return self._ops().not_equal(self, o)

    __hash__ = object.__hash__


def _numpy_text(value, array_text):
    """A 0-d value as its number (``0.865458``, ``True``: numpy's shortest round-trip text),
    an array as ``array_text`` (repr or str) writes it."""
    value = value if isinstance(value, np.ndarray) else np.asarray(value)
    return str(value[()]) if value.ndim == 0 else array_text(value)


def is_symbolic(x):
    return isinstance(x, SymbolicTensor)
