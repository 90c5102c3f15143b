"""Merging layers: Concatenate, Add (and the other element-wise merges)."""
from ...errors import ShapeError
from ...ir.types import fmt_shape
from .. import ops
from .base import Layer


class _Merge(Layer):
    def _check(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ShapeError(f"{self._describe()} expects a list of at least 2 inputs, got "
                             f"{type(inputs).__name__}")

    def build(self, input_shape):
        self._check(input_shape)


class Add(_Merge):
    def call(self, inputs):
        self._check(inputs)
        out = inputs[0]
        for x in inputs[1:]:
            out = ops.add(out, x)
        return out


class Subtract(_Merge):
    def call(self, inputs):
        self._check(inputs)
        return ops.subtract(inputs[0], inputs[1])


class Multiply(_Merge):
    def call(self, inputs):
        self._check(inputs)
        out = inputs[0]
        for x in inputs[1:]:
            out = ops.multiply(out, x)
        return out


class Average(_Merge):
    def call(self, inputs):
        return ops.multiply(Add.call(self, inputs), 1.0 / len(inputs))


class Maximum(_Merge):
    def call(self, inputs):
        self._check(inputs)
        out = inputs[0]
        for x in inputs[1:]:
            out = ops.maximum(out, x)
        return out


class Concatenate(_Merge):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        self._check(inputs)
        try:
            return ops.concatenate(list(inputs), axis=self.axis)
        except ShapeError:
            raise ShapeError(f"{self._describe()} expects inputs that match except along axis {self.axis}, got "
                             + ", ".join(fmt_shape(x.shape) for x in inputs)) from None

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
