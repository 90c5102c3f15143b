"""Tensor types of the IR: a shape (ints, or None for a symbolic dimension) and a dtype."""
from dataclasses import dataclass

DTYPES = ("float32", "float64", "int32", "int64", "bool")


@dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}; expected one of {DTYPES}")

    @property
    def rank(self):
        return len(self.shape)

    @property
    def is_static(self):
        return all(d is not None for d in self.shape)

    def __str__(self):
        dims = ", ".join("None" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def fmt_shape(shape):
    """Keras's way of printing a shape: (None, 4)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def num_elements(shape):
    n = 1
    for d in shape:
        n *= d
    return n
