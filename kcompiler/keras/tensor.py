"""Tensors of the front end.

``SymbolicTensor``: a node of a graph being traced (shape may hold None).
``Tensor``: a concrete value, what eager calls return (``.numpy()``, ``.shape``, ``.dtype``).
Both take Python arithmetic operators, which dispatch to ``keras.ops``.
"""
import numpy as np

from ..ir.types import fmt_shape


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
        return self._value

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
        return f"<Tensor: shape={self.shape}, dtype={self.dtype}, numpy=\n{self._value!r}>"

    def __eq__(self, o):
        return self._ops().equal(self, o)

    def __ne__(self, o):
        return self._ops().not_equal(self, o)

    __hash__ = object.__hash__


def is_symbolic(x):
    return isinstance(x, SymbolicTensor)


def as_numbers(x, what="value"):
    """User data (arrays, lists, tensors) as a numpy array of real numbers or bools, unconverted;
    strings, objects and complex numbers raise TypeError naming ``what``."""
    if isinstance(x, Tensor):
        x = x.numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype.kind in "USO":
        raise TypeError(f"{what}: cannot convert data of dtype {a.dtype} to a tensor; expected numbers")
    if a.dtype.kind == "c":
        raise TypeError(f"{what}: complex data ({a.dtype}) is not supported; expected real numbers")
    return a


def to_array(x, dtype=None, what="value"):
    """A numpy array from user data: float64 becomes float32 (as Keras casts), Python
    floats become float32, wider integers become int32; ``dtype`` converts to that dtype
    instead. Strings, objects and complex numbers raise TypeError; integers or floats that
    do not fit the integer dtype they are narrowed to raise ValueError (a wrapped id would
    silently read another row)."""
    a = as_numbers(x, what)
    if dtype is not None:
        target = np.dtype(dtype)
        if target.kind in "iu" and not np.can_cast(a.dtype, target):
            _check_fits(a, target, what)
        return np.asarray(a, dtype=target, order="C")  # keeps 0-d (ascontiguousarray makes it 1-d)
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
    elif a.dtype == np.int64 or a.dtype.kind == "u":
        _check_fits(a, np.dtype(np.int32), what)
        a = a.astype(np.int32)
    return np.asarray(a, order="C")


def _check_fits(a, target, what="value"):
    """Raises ValueError naming the first extreme of ``a`` (an array of integers or floats)
    that the integer dtype ``target`` cannot hold: NaN and inf included. One min and one
    max over the array, so callers check whole arrays once rather than each batch."""
    if a.size == 0:
        return
    info = np.iinfo(target)
    lo, hi = a.min().item(), a.max().item()  # Python numbers: exact comparisons, whatever the dtype
    # Floats are truncated toward zero when converted, so anything above min - 1 and below max + 1
    # fits; the tests are negated comparisons so that NaN (which compares false) fails them.
    if not lo > info.min - 1:
        bad = lo
    elif not hi < info.max + 1:
        bad = hi
    else:
        return
    raise ValueError(f"{what}: value {bad!r} does not fit in {target.name} (the range is [{info.min}, "
                     f"{info.max}]); converting it would give another number")
