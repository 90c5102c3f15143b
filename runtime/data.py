"""User data to numpy arrays, checked: what every entry point (fit, Program.predict, eager
calls) feeds generated code. Strings, objects and complex numbers are refused; integers are
range-checked where they are narrowed (a wrapped id would silently read another row)."""
import numpy as np


def as_numbers(x, what="value"):
    """User data (arrays, lists, tensors) as a numpy array of real numbers or bools, unconverted;
    strings, objects and complex numbers raise TypeError naming ``what``."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # a kcompiler.keras Tensor, a framework's tensor
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
