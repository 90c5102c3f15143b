"""numpy references of the element-wise ops (and of each unary op's derivative)."""
import math

import numpy as np

from ..ir.registry import reference
from .elementwise import COMPARISONS, UNARY, UNARY_NO_GRAD

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    # Two-sided so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu(x, approximate):
    if approximate:
        c = math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_d(x, approximate):
    if approximate:
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# name -> (f(x, **attrs), f'(x, **attrs))
UNARY_REFERENCE = {
    "neg": (lambda x: -x, lambda x: -np.ones_like(x)),
    "exp": (np.exp, np.exp),
    "log": (np.log, lambda x: 1 / x),
    "sqrt": (np.sqrt, lambda x: 0.5 / np.sqrt(x)),
    "rsqrt": (lambda x: 1 / np.sqrt(x), lambda x: -0.5 * (1 / np.sqrt(x)) ** 3),  # NaN for x < 0, as TF
    "square": (np.square, lambda x: 2 * x),
    "abs": (np.abs, np.sign),
    "reciprocal": (lambda x: 1 / x, lambda x: -1 / (x * x)),
    "sin": (np.sin, np.cos),
    "cos": (np.cos, lambda x: -np.sin(x)),
    "log1p": (np.log1p, lambda x: 1 / (1 + x)),
    "expm1": (np.expm1, np.exp),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(x.dtype)),
    "relu6": (lambda x: np.clip(x, 0, 6), lambda x: ((x > 0) & (x < 6)).astype(x.dtype)),
    "elu": (lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
            lambda x, alpha: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))),
    "selu": (lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
             lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))),
    "softplus": (lambda x: np.logaddexp(0, x), _sigmoid),
    "softsign": (lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "gelu": (_gelu, _gelu_d),
    # Keras 3: hard_sigmoid(x) = relu6(x + 3) / 6.
    "hard_sigmoid": (lambda x: np.clip(x / 6 + 0.5, 0, 1),
                     lambda x: np.where((x > -3) & (x < 3), 1 / 6, 0.0)),
    "leaky_relu": (lambda x, negative_slope: np.where(x > 0, x, negative_slope * x),
                   lambda x, negative_slope: np.where(x > 0, 1.0, negative_slope)),
}
assert set(UNARY_REFERENCE) == set(UNARY), set(UNARY) ^ set(UNARY_REFERENCE)


def _as(x, like):
    return np.asarray(x, dtype=like.dtype)


def _register_unary(name, f, df):
    @reference(name)
    def forward(x, **attrs):
        return _as(f(x, **attrs), x)

    @reference(f"{name}_grad")
    def backward(x, dy, **attrs):
        return _as(dy * df(x, **attrs), x)


for _name, (_f, _df) in UNARY_REFERENCE.items():
    _register_unary(_name, _f, _df)

_NO_GRAD = {"sign": np.sign, "floor": np.floor, "round": np.round, "ceil": np.ceil}
for _name in UNARY_NO_GRAD:
    reference(_name)(lambda x, _f=_NO_GRAD[_name]: _f(x).astype(x.dtype))

_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
           "maximum": np.maximum, "minimum": np.minimum, "pow": np.power}
for _name, _f in _BINARY.items():
    reference(_name)(lambda x, y, _f=_f: _f(x, y).astype(x.dtype))

_COMPARE = {"greater": np.greater, "greater_equal": np.greater_equal, "less": np.less,
            "less_equal": np.less_equal, "equal": np.equal, "not_equal": np.not_equal,
            "logical_and": np.logical_and, "logical_or": np.logical_or}
assert set(COMPARISONS) <= set(_COMPARE)
for _name, _f in _COMPARE.items():
    reference(_name)(lambda x, y, _f=_f: _f(x, y))
reference("logical_not")(np.logical_not)


@reference("pow_grad_base")
def pow_grad_base(x, y, dy):
    return (dy * y * np.power(x, y - 1)).astype(x.dtype)


@reference("pow_grad_exponent")
def pow_grad_exponent(x, y, dy):
    safe = np.where(x > 0, x, 1)
    return np.where(x > 0, dy * np.power(x, y) * np.log(safe), 0).astype(x.dtype)


@reference("where")
def where(c, x, y):
    return np.where(c, x, y).astype(x.dtype)


@reference("cast")
def cast(x, dtype):
    return x.astype(dtype)


@reference("clip")
def clip(x, lo, hi):
    return np.clip(x, lo, hi).astype(x.dtype)


@reference("clip_grad")
def clip_grad(x, dy, lo, hi):
    return np.where((x >= lo) & (x <= hi), dy, 0).astype(x.dtype)
