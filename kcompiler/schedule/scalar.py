"""Scalar math written once: the value of every element-wise op (and its ``_grad`` companion,
dy * f'(x)) as an expression over the primitives of ``schedule/kernel.py``.

A definition is ``fn(args, attrs) -> Expr``: ``args`` are the operand expressions. Backends
render a ``Call`` of a registry op by expanding it through its definition, unless they spell
the op natively (a CUDA intrinsic, an LLVM intrinsic): the renderer asks ``expand`` only for
the ops it does not know. Registry ops named like a primitive (``add``, ``exp``, ``tanh``,
``round``, ``cast``, ...) are that primitive and have no definition here. The numpy references
(kcompiler/ops/*_reference.py) stay the judge: the kernel tests compare every definition,
rendered by each backend, against them.

A unary op ``f`` has its value defined here (unless it is a primitive: exp, tanh, ...) and its
derivative in ``DERIVATIVES``; ``f_grad(x, dy)`` is ``dy * f'(x)``. The random ops
(``COUNTER_OPS``: dropout, gaussian_noise, gaussian_dropout) take a third operand, the element's
flat index (the Philox counter): the kernel description passes it.
"""
import math

from .kernel import PRIMITIVES, Const, call

DEFINITIONS = {}


def define(name):
    def attach(fn):
        if name in PRIMITIVES:
            raise ValueError(f"{name!r} is a primitive: every backend spells it")
        if name in DEFINITIONS:
            raise ValueError(f"scalar definition of {name!r} given twice")
        DEFINITIONS[name] = fn
        return fn
    return attach


def defined(name):
    """Whether every backend can compute op ``name``: a primitive, or defined here."""
    return name in PRIMITIVES or name in DEFINITIONS


def expand(c):
    """The expression computing Call ``c`` one level down (primitives and other defined ops)."""
    try:
        fn = DEFINITIONS[c.op]
    except KeyError:
        from ..errors import UnsupportedError
        raise UnsupportedError(f"no scalar definition for op {c.op!r}") from None
    return fn(c.args, c.attr_dict)


def c(value, like):
    """A constant of ``like``'s dtype."""
    return Const(float(value) if like.dtype.startswith("float") else int(value), like.dtype)


# ---- unary math and activations, formula for formula as the references ------------------------

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def add(x, y): return call("add", x, y)
def sub(x, y): return call("sub", x, y)
def mul(x, y): return call("mul", x, y)
def div(x, y): return call("div", x, y)
def select(cond, x, y): return call("select", cond, x, y)
def gt0(x): return call("gt", x, c(0, x))   # false for NaN


def sigmoid(x):
    # two-sided, so neither branch overflows
    e = call("exp", call("neg", call("abs", x)))
    one = c(1, x)
    return select(call("ge", x, c(0, x)), div(one, add(one, e)), div(e, add(one, e)))


def sign(x):
    """-1, 0 or 1; NaN stays NaN (np.sign, TensorFlow 2)."""
    zero = c(0, x)
    return select(gt0(x), c(1, x), select(call("lt", x, zero), c(-1, x), select(call("isnan", x), x, zero)))


def _in_range(x, lo, hi):
    return call("and", call("gt", x, c(lo, x)), call("lt", x, c(hi, x)))


def _elu(x, alpha):
    return select(gt0(x), x, mul(c(alpha, x), call("expm1", call("min", x, c(0, x)))))


def _elu_d(x, alpha):
    return select(gt0(x), c(1, x), mul(c(alpha, x), call("exp", call("min", x, c(0, x)))))


def _gelu_inner(x):
    """sqrt(2/pi) * (x + 0.044715 x^3), the tanh approximation's argument."""
    return mul(c(math.sqrt(2 / math.pi), x), add(x, mul(c(0.044715, x), mul(x, mul(x, x)))))


def _gelu(x, approximate):
    half, one = c(0.5, x), c(1, x)
    if approximate:
        return mul(mul(half, x), add(one, call("tanh", _gelu_inner(x))))
    return mul(mul(half, x), add(one, call("erf", mul(x, c(1 / math.sqrt(2), x)))))


def _gelu_d(x, approximate):
    half, one = c(0.5, x), c(1, x)
    if approximate:
        t = call("tanh", _gelu_inner(x))
        dinner = mul(c(math.sqrt(2 / math.pi), x), add(one, mul(c(3 * 0.044715, x), mul(x, x))))
        return add(mul(half, add(one, t)), mul(mul(half, x), mul(sub(one, mul(t, t)), dinner)))
    cdf = mul(half, add(one, call("erf", mul(x, c(1 / math.sqrt(2), x)))))
    pdf = mul(call("exp", mul(c(-0.5, x), mul(x, x))), c(1 / math.sqrt(2 * math.pi), x))
    return add(cdf, mul(x, pdf))


def _rsqrt_d(x):
    """d rsqrt(x) / dx = -r^3 / 2 with r = rsqrt(x) (TensorFlow's RsqrtGrad); NaN where x < 0."""
    r = div(c(1, x), call("sqrt", x))
    return mul(c(-0.5, x), mul(r, mul(r, r)))


def _softplus(x):
    return add(call("log1p", call("exp", call("neg", call("abs", x)))), call("max", x, c(0, x)))


def _softsign_d(x):
    d = add(c(1, x), call("abs", x))
    return div(c(1, x), mul(d, d))


# The value of every unary op that is not a primitive (neg, exp, log, sqrt, abs, sin, cos, log1p,
# expm1, tanh, floor, ceil and round are), mirroring UNARY_REFERENCE.
VALUES = {
    "rsqrt": lambda x: div(c(1, x), call("sqrt", x)),
    "square": lambda x: mul(x, x),
    "reciprocal": lambda x: div(c(1, x), x),
    "sigmoid": sigmoid,
    # relu(NaN) is NaN (np.maximum, TensorFlow on the CPU): "not x <= 0" keeps x
    "relu": lambda x: select(call("le", x, c(0, x)), c(0, x), x),
    "relu6": lambda x: call("min", call("max", x, c(0, x)), c(6, x)),
    "elu": _elu,
    "selu": lambda x: mul(c(SELU_SCALE, x), _elu(x, SELU_ALPHA)),
    "softplus": _softplus,
    "softsign": lambda x: div(x, add(c(1, x), call("abs", x))),
    "silu": lambda x: mul(x, call("sigmoid", x)),
    "gelu": _gelu,
    "hard_sigmoid": lambda x: call("min", call("max", add(mul(x, c(1 / 6, x)), c(0.5, x)), c(0, x)), c(1, x)),
    "leaky_relu": lambda x, negative_slope: select(gt0(x), x, mul(c(negative_slope, x), x)),
    "sign": sign,
}
for _name, _f in VALUES.items():
    define(_name)(lambda args, attrs, _f=_f: _f(args[0], **attrs))

# f' of every unary op, mirroring UNARY_REFERENCE: ``f_grad(x, dy)`` is ``dy * f'(x)``.
DERIVATIVES = {
    "neg": lambda x: c(-1, x),
    "exp": lambda x: call("exp", x),
    "log": lambda x: div(c(1, x), x),
    "sqrt": lambda x: div(c(0.5, x), call("sqrt", x)),
    "rsqrt": _rsqrt_d,
    "square": lambda x: mul(c(2, x), x),
    "abs": sign,
    "reciprocal": lambda x: call("neg", div(c(1, x), mul(x, x))),
    "sin": lambda x: call("cos", x),
    "cos": lambda x: call("neg", call("sin", x)),
    "log1p": lambda x: div(c(1, x), add(c(1, x), x)),
    "expm1": lambda x: call("exp", x),
    "tanh": lambda x: sub(c(1, x), mul(call("tanh", x), call("tanh", x))),
    "sigmoid": lambda x: mul(call("sigmoid", x), sub(c(1, x), call("sigmoid", x))),
    "relu": lambda x: select(gt0(x), c(1, x), c(0, x)),
    "relu6": lambda x: select(_in_range(x, 0, 6), c(1, x), c(0, x)),
    "elu": _elu_d,
    "selu": lambda x: mul(c(SELU_SCALE, x), _elu_d(x, SELU_ALPHA)),
    "softplus": lambda x: call("sigmoid", x),
    "softsign": _softsign_d,
    "silu": lambda x: mul(call("sigmoid", x), add(c(1, x), mul(x, sub(c(1, x), call("sigmoid", x))))),
    "gelu": _gelu_d,
    "hard_sigmoid": lambda x: select(_in_range(x, -3, 3), c(1 / 6, x), c(0, x)),
    "leaky_relu": lambda x, negative_slope: select(gt0(x), c(1, x), c(negative_slope, x)),
}
for _name, _df in DERIVATIVES.items():
    define(f"{_name}_grad")(lambda args, attrs, _df=_df: mul(args[1], _df(args[0], **attrs)))


# ---- arithmetic, comparisons, select, clip -------------------------------------------------------

for _op, _prim in {"bias_add": "add", "maximum": "max", "minimum": "min", "greater": "gt", "greater_equal": "ge",
                   "less": "lt", "less_equal": "le", "equal": "eq", "not_equal": "ne", "logical_and": "and",
                   "logical_or": "or", "logical_not": "not", "where": "select"}.items():
    define(_op)(lambda args, attrs, _prim=_prim: call(_prim, *args))


@define("pow_grad_base")
def pow_grad_base(args, attrs):
    x, y, dy = args
    return mul(dy, mul(y, call("pow", x, sub(y, c(1, y)))))


@define("pow_grad_exponent")
def pow_grad_exponent(args, attrs):
    x, y, dy = args
    positive = gt0(x)
    safe = select(positive, x, c(1, x))
    return select(positive, mul(dy, mul(call("pow", x, y), call("log", safe))), c(0, x))


@define("clip")
def clip(args, attrs):
    (x,) = args
    return call("min", call("max", x, c(attrs["lo"], x)), c(attrs["hi"], x))


@define("clip_grad")
def clip_grad(args, attrs):
    x, dy = args
    inside = call("and", call("ge", x, c(attrs["lo"], x)), call("le", x, c(attrs["hi"], x)))
    return select(inside, dy, c(0, dy))


@define("batch_norm_apply")
def batch_norm_apply(args, attrs):
    """(x - mean) * (rsqrt(var + epsilon) * gamma) + beta (ops/batch_norm.py), as
    BatchNormalization's composition of primitive ops computed it."""
    x, mean, var, *params = args
    inv = call("rsqrt", add(var, c(attrs.get("epsilon", 1e-3), var)))
    if attrs.get("scale", True):
        inv = mul(inv, params.pop(0))
    y = mul(sub(x, mean), inv)
    return add(y, params.pop(0)) if attrs.get("center", True) else y


# ---- dropout: Philox4x32-10, counter (flat index, step, 0, 0), key (seed, 0) ----------------

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def u32(value):
    return Const(value & 0xFFFFFFFF, "uint32")


def philox_uniform(index, step, seed, key1=0):
    """The uniform float in [0, 1) of kcompiler.ops.nn_reference.philox_uniform for element
    ``index`` (int expressions), key (seed, key1): output word 0 of the rounds, its top 24 bits."""
    c0, c1, c2, c3 = call("cast", index, dtype="uint32"), call("cast", step, dtype="uint32"), u32(0), u32(0)
    for r in range(10):
        k0, k1 = u32(seed + r * PHILOX_W0), u32(key1 + r * PHILOX_W1)  # the key schedule is static
        m0, m1 = u32(PHILOX_M0), u32(PHILOX_M1)
        hi0, lo0 = call("umulhi", c0, m0), mul(c0, m0)
        hi1, lo1 = call("umulhi", c2, m1), mul(c2, m1)
        # (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the older word first renders closer to round
        # order (LLVM then spills less)
        c0, c1, c2, c3 = call("xor", call("xor", c1, hi1), k0), lo1, call("xor", call("xor", c3, hi0), k1), lo0
    top = call("cast", call("shr", c0, u32(8)), dtype="float32")
    return mul(top, Const(1.0 / (1 << 24), "float32"))


# Ops whose value depends on the element's flat index, passed as their last operand.
COUNTER_OPS = frozenset({"dropout", "gaussian_noise", "gaussian_dropout"})


@define("dropout")
def dropout(args, attrs):
    x, step, index = args
    keep = call("ge", philox_uniform(index, step, attrs["seed"]), Const(float(attrs["rate"]), "float32"))
    return select(keep, div(x, c(1 - attrs["rate"], x)), c(0, x))


def philox_normal(index, step, seed):
    """The standard normal of kcompiler.ops.nn_reference.philox_normal for element ``index``:
    Box-Muller over the uniforms of keys (seed, 1) and (seed, 2)."""
    u1, u2 = philox_uniform(index, step, seed, key1=1), philox_uniform(index, step, seed, key1=2)
    one = Const(1.0, "float32")
    radius = call("sqrt", mul(Const(-2.0, "float32"), call("log", sub(one, u1))))
    return mul(radius, call("cos", mul(Const(2 * math.pi, "float32"), u2)))


@define("gaussian_noise")
def gaussian_noise(args, attrs):
    x, step, index = args
    return add(x, mul(c(attrs["stddev"], x), philox_normal(index, step, attrs["seed"])))


@define("gaussian_dropout")
def gaussian_dropout(args, attrs):
    x, step, index = args
    return mul(x, add(c(1, x), mul(c(attrs["stddev"], x), philox_normal(index, step, attrs["seed"]))))
