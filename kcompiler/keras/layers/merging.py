"""Merging layers: Concatenate, Add (and the other element-wise merges), Dot.

Dot is Keras's batch_dot of two inputs of rank 2 or 3 as one batched matmul: the contracted
axis of each input is put where matmul contracts by its transpose flags (no copy); rank-2
inputs are (B, 1, n) / (B, n, 1) views, their unit axis reshaped away afterwards."""
from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import backend, ops
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


class Dot(_Merge):
    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axes, int):
            if not isinstance(axes, (list, tuple)):
                raise TypeError(f"Invalid type for argument `axes`: it should be a list or an int. Received: "
                                f"axes={axes}")
            if len(axes) != 2:
                raise ValueError(f"Invalid format for argument `axes`: it should contain two elements. Received: "
                                 f"axes={axes}")
            if not all(isinstance(a, int) for a in axes):
                raise ValueError(f"Invalid format for argument `axes`: list elements should be integers. Received: "
                                 f"axes={axes}")
        self.axes = axes
        self.normalize = normalize
        self.supports_masking = True

    def _axes(self, shapes):
        axes = [self.axes] * 2 if isinstance(self.axes, int) else list(self.axes)
        return [a % len(s) if a < 0 else a for a, s in zip(axes, shapes)]

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(f"A `Dot` layer should be called on a list of 2 inputs. Received: input_shape="
                             f"{input_shape}")
        shape1, shape2 = input_shape
        a1, a2 = self._axes(input_shape)
        if shape1[a1] is not None and shape2[a2] is not None and shape1[a1] != shape2[a2]:
            raise ValueError(f"Incompatible input shapes: axis values {shape1[a1]} (at axis {a1}) != {shape2[a2]} "
                             f"(at axis {a2}). Full input shapes: {shape1}, {shape2}")

    def call(self, inputs):
        self._check(inputs)
        if len(inputs) != 2:
            raise ValueError(f"A `Dot` layer should be called on exactly 2 inputs. Received: {len(inputs)} inputs")
        x, y = inputs
        ax, ay = self._axes([x.shape, y.shape])
        if self.normalize:
            x, y = _l2_normalize(x, ax), _l2_normalize(y, ay)
        ranks = (len(x.shape), len(y.shape))
        if not set(ranks) <= {2, 3} or 0 in (ax, ay):
            raise UnsupportedError(f"{self._describe()}: Dot of inputs of ranks 2 and 3 over non-batch axes is "
                                   f"supported, got shapes {fmt_shape(x.shape)} and {fmt_shape(y.shape)} with "
                                   f"axes={self.axes}")
        if ranks[0] == 2:  # (B, n) -> (B, 1, n), contracted over its last axis
            x, ax = ops.reshape(x, (0, 1, x.shape[1])), 2
        if ranks[1] == 2:  # (B, n) -> (B, n, 1), contracted over axis 1
            y, ay = ops.reshape(y, (0, y.shape[1], 1)), 1
        out = backend.apply_op("matmul", [x, y], transpose_a=ax == 1, transpose_b=ay == 2)
        if ranks == (2, 2):
            return ops.reshape(out, (0, 1))
        if ranks[0] == 2:
            return ops.reshape(out, (0, out.shape[2]))
        if ranks[1] == 2:
            return ops.reshape(out, (0, out.shape[1]))
        return out

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "axes": self.axes, "normalize": self.normalize}


def _l2_normalize(x, axis):
    """x * min(rsqrt(sum(x^2)), 1/epsilon) along ``axis`` (keras.ops.normalize, order 2)."""
    inverse_norm = ops.minimum(ops.rsqrt(ops.sum(ops.square(x), axis=axis, keepdims=True)), 1.0 / 1e-7)
    return ops.multiply(x, inverse_norm)

