"""Scalar lowerings of the element-wise ops: how one element is computed in LLVM IR.

Each element-wise op registers ``fn(e, args, attrs) -> value`` for the target 'llvm',
where ``e`` is a ScalarEmitter (the IR builder plus math helpers, the element's
flat index, the operand dtypes). Element-wise kernels, fused or not, are loops that
evaluate these per element; derivatives follow the references in
kcompiler/ops/elementwise_reference.py formula for formula.
"""
import math

import llvmlite.ir as ir

from ...ir.registry import all_ops, lowering
from ...ops.elementwise import COMPARISONS, UNARY
from .irutil import REG_TYPE, c64, f32, f64, i1, i32, i64, intrinsic

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class ScalarEmitter:
    def __init__(self, b, flat_index=None):
        self.b = b
        self.flat_index = flat_index

    # constants and arithmetic in the type of a value
    def c(self, v, like):
        return ir.Constant(like.type, float(v))

    def add(self, x, y): return self.b.fadd(x, y)
    def sub(self, x, y): return self.b.fsub(x, y)
    def mul(self, x, y): return self.b.fmul(x, y)
    def div(self, x, y): return self.b.fdiv(x, y)
    def neg(self, x): return self.b.fneg(x)

    def _fname(self, base, x):
        return f"llvm.{base}.{'f32' if x.type == f32 else 'f64'}"

    def _libm(self, base, x):
        return intrinsic(self.b, base + ("f" if x.type == f32 else ""), x.type, [x])

    def log(self, x): return intrinsic(self.b, self._fname("log", x), x.type, [x])
    def sqrt(self, x): return intrinsic(self.b, self._fname("sqrt", x), x.type, [x])
    def fabs(self, x): return intrinsic(self.b, self._fname("fabs", x), x.type, [x])
    def sin(self, x): return intrinsic(self.b, self._fname("sin", x), x.type, [x])
    def cos(self, x): return intrinsic(self.b, self._fname("cos", x), x.type, [x])
    def floor(self, x): return intrinsic(self.b, self._fname("floor", x), x.type, [x])
    def ceil(self, x): return intrinsic(self.b, self._fname("ceil", x), x.type, [x])
    def roundeven(self, x): return intrinsic(self.b, self._fname("roundeven", x), x.type, [x])
    def log1p(self, x): return self._libm("log1p", x)
    def expm1(self, x): return self._libm("expm1", x)
    def erf(self, x): return self._libm("erf", x)

    # float32 exp and tanh are inline polynomials (Cephes expf/tanhf, about 1 ulp) rather than
    # libm calls, so loops using them (sigmoid, tanh, softplus, elu, gates of recurrent cells)
    # vectorise.
    def exp(self, x):
        if x.type != f32:
            return intrinsic(self.b, self._fname("exp", x), x.type, [x])
        b = self.b
        # exp(x) = 2^n * e^r, n = round(x / ln 2), |r| <= ln2 / 2; clamped where the result
        # is 0 or inf anyway (NaN passes through the min/max)
        v = self.minf(self.maxf(x, self.c(-104.0, x)), self.c(89.0, x))
        n = self.floor(self.add(self.mul(v, self.c(1.44269504088896341, x)), self.c(0.5, x)))
        r = self.sub(self.sub(v, self.mul(n, self.c(0.693359375, x))), self.mul(n, self.c(-2.12194440e-4, x)))
        p = self.c(1.9875691500e-4, x)
        for coeff in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = self.add(self.mul(p, r), self.c(coeff, x))
        y = self.add(self.add(self.mul(p, self.mul(r, r)), r), self.c(1.0, x))
        # 2^n as two powers of two, each a normal float for n in [-150, 129]; a NaN x gives a NaN
        # y, and n must then not reach fptosi (its result would be poison)
        ni = b.fptosi(self.select(b.fcmp_ordered("ord", n, n), n, self.c(0.0, x)), i32)
        n1 = b.ashr(ni, ir.Constant(i32, 1))
        scale = [b.bitcast(b.shl(b.add(k, ir.Constant(i32, 127)), ir.Constant(i32, 23)), f32)
                 for k in (n1, b.sub(ni, n1))]
        return self.mul(self.mul(y, scale[0]), scale[1])

    def tanh(self, x):
        if x.type != f32:
            return self._libm("tanh", x)
        z = self.fabs(x)
        # |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1) with the sign of x; below: an odd polynomial
        big = self.sub(self.c(1.0, x), self.div(self.c(2.0, x), self.add(self.exp(self.add(z, z)), self.c(1.0, x))))
        big = self.select(self.b.fcmp_ordered("<", x, self.c(0.0, x)), self.neg(big), big)
        x2 = self.mul(x, x)
        p = self.c(-5.70498872745e-3, x)
        for coeff in (2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1):
            p = self.add(self.mul(p, x2), self.c(coeff, x))
        small = self.add(self.mul(self.mul(p, x2), x), x)
        return self.select(self.b.fcmp_unordered("<", z, self.c(0.625, x)), small, big)

    def pow(self, x, y):
        return intrinsic(self.b, self._fname("pow", x), x.type, [x, y])

    def maxf(self, x, y):
        # numpy's maximum propagates NaN from either side
        return self.b.select(self.b.fcmp_ordered(">=", x, y), x, self.b.select(self.b.fcmp_unordered("uno", x, x), x, y))

    def minf(self, x, y):
        return self.b.select(self.b.fcmp_ordered("<=", x, y), x, self.b.select(self.b.fcmp_unordered("uno", x, x), x, y))

    def gt0(self, x):
        return self.b.fcmp_ordered(">", x, self.c(0, x))

    def select(self, cond, x, y):
        return self.b.select(cond, x, y)

    def sigmoid(self, x):
        e = self.exp(self.neg(self.fabs(x)))
        one = self.c(1, x)
        pos = self.div(one, self.add(one, e))
        neg = self.div(e, self.add(one, e))
        return self.select(self.b.fcmp_ordered(">=", x, self.c(0, x)), pos, neg)


def _elu(e, x, alpha):
    neg = e.mul(e.c(alpha, x), e.expm1(e.minf(x, e.c(0, x))))
    return e.select(e.gt0(x), x, neg)


def _gelu(e, x, approximate):
    half, one = e.c(0.5, x), e.c(1, x)
    if approximate:
        k = e.c(math.sqrt(2 / math.pi), x)
        inner = e.mul(k, e.add(x, e.mul(e.c(0.044715, x), e.mul(x, e.mul(x, x)))))
        return e.mul(e.mul(half, x), e.add(one, e.tanh(inner)))
    return e.mul(e.mul(half, x), e.add(one, e.erf(e.mul(x, e.c(1 / math.sqrt(2), x)))))


def _gelu_d(e, x, approximate):
    half, one = e.c(0.5, x), e.c(1, x)
    if approximate:
        k = e.c(math.sqrt(2 / math.pi), x)
        t = e.tanh(e.mul(k, e.add(x, e.mul(e.c(0.044715, x), e.mul(x, e.mul(x, x))))))
        dinner = e.mul(k, e.add(one, e.mul(e.c(3 * 0.044715, x), e.mul(x, x))))
        return e.add(e.mul(half, e.add(one, t)), e.mul(e.mul(half, x), e.mul(e.sub(one, e.mul(t, t)), dinner)))
    cdf = e.mul(half, e.add(one, e.erf(e.mul(x, e.c(1 / math.sqrt(2), x)))))
    pdf = e.mul(e.exp(e.mul(e.c(-0.5, x), e.mul(x, x))), e.c(1 / math.sqrt(2 * math.pi), x))
    return e.add(cdf, e.mul(x, pdf))


def _in_range(e, x, lo, hi):
    return e.b.and_(e.b.fcmp_ordered(">", x, e.c(lo, x)), e.b.fcmp_ordered("<", x, e.c(hi, x)))


# name -> (f(e, x, **attrs), f'(e, x, **attrs)); mirrors UNARY_REFERENCE.
UNARY_LLVM = {
    "neg": (lambda e, x: e.neg(x), lambda e, x: e.c(-1, x)),
    "exp": (lambda e, x: e.exp(x), lambda e, x: e.exp(x)),
    "log": (lambda e, x: e.log(x), lambda e, x: e.div(e.c(1, x), x)),
    "sqrt": (lambda e, x: e.sqrt(x), lambda e, x: e.div(e.c(0.5, x), e.sqrt(x))),
    "rsqrt": (lambda e, x: e.div(e.c(1, x), e.sqrt(x)),
              lambda e, x: _rsqrt_d(e, e.div(e.c(1, x), e.sqrt(x)))),
    "square": (lambda e, x: e.mul(x, x), lambda e, x: e.mul(e.c(2, x), x)),
    "abs": (lambda e, x: e.fabs(x), lambda e, x: _sign(e, x)),
    "reciprocal": (lambda e, x: e.div(e.c(1, x), x), lambda e, x: e.neg(e.div(e.c(1, x), e.mul(x, x)))),
    "sin": (lambda e, x: e.sin(x), lambda e, x: e.cos(x)),
    "cos": (lambda e, x: e.cos(x), lambda e, x: e.neg(e.sin(x))),
    "log1p": (lambda e, x: e.log1p(x), lambda e, x: e.div(e.c(1, x), e.add(e.c(1, x), x))),
    "expm1": (lambda e, x: e.expm1(x), lambda e, x: e.exp(x)),
    "tanh": (lambda e, x: e.tanh(x), lambda e, x: e.sub(e.c(1, x), e.mul(e.tanh(x), e.tanh(x)))),
    "sigmoid": (lambda e, x: e.sigmoid(x),
                lambda e, x: e.mul(e.sigmoid(x), e.sub(e.c(1, x), e.sigmoid(x)))),
    # relu(NaN) is NaN (np.maximum, TensorFlow on the CPU): "x > 0 or unordered" keeps x
    "relu": (lambda e, x: e.select(e.b.fcmp_unordered(">", x, e.c(0, x)), x, e.c(0, x)),
             lambda e, x: e.select(e.gt0(x), e.c(1, x), e.c(0, x))),
    "relu6": (lambda e, x: e.minf(e.maxf(x, e.c(0, x)), e.c(6, x)),
              lambda e, x: e.select(_in_range(e, x, 0, 6), e.c(1, x), e.c(0, x))),
    "elu": (_elu, lambda e, x, alpha: e.select(e.gt0(x), e.c(1, x),
                                               e.mul(e.c(alpha, x), e.exp(e.minf(x, e.c(0, x)))))),
    "selu": (lambda e, x: e.mul(e.c(SELU_SCALE, x), _elu(e, x, SELU_ALPHA)),
             lambda e, x: e.mul(e.c(SELU_SCALE, x), e.select(
                 e.gt0(x), e.c(1, x), e.mul(e.c(SELU_ALPHA, x), e.exp(e.minf(x, e.c(0, x))))))),
    "softplus": (lambda e, x: e.add(e.log1p(e.exp(e.neg(e.fabs(x)))), e.maxf(x, e.c(0, x))),
                 lambda e, x: e.sigmoid(x)),
    "softsign": (lambda e, x: e.div(x, e.add(e.c(1, x), e.fabs(x))),
                 lambda e, x: e.div(e.c(1, x), e.mul(e.add(e.c(1, x), e.fabs(x)), e.add(e.c(1, x), e.fabs(x))))),
    "silu": (lambda e, x: e.mul(x, e.sigmoid(x)),
             lambda e, x: e.mul(e.sigmoid(x), e.add(e.c(1, x), e.mul(x, e.sub(e.c(1, x), e.sigmoid(x)))))),
    "gelu": (_gelu, _gelu_d),
    "hard_sigmoid": (lambda e, x: e.minf(e.maxf(e.add(e.mul(x, e.c(1 / 6, x)), e.c(0.5, x)), e.c(0, x)), e.c(1, x)),
                     lambda e, x: e.select(_in_range(e, x, -3, 3), e.c(1 / 6, x), e.c(0, x))),
    "leaky_relu": (lambda e, x, negative_slope: e.select(e.gt0(x), x, e.mul(e.c(negative_slope, x), x)),
                   lambda e, x, negative_slope: e.select(e.gt0(x), e.c(1, x), e.c(negative_slope, x))),
}
assert set(UNARY_LLVM) == set(UNARY), set(UNARY) ^ set(UNARY_LLVM)


def _sign(e, x):
    """-1, 0 or 1; NaN stays NaN (np.sign, TensorFlow 2)."""
    zero, one = e.c(0, x), e.c(1, x)
    pos = e.b.fcmp_ordered(">", x, zero)
    neg = e.b.fcmp_ordered("<", x, zero)
    nan = e.b.fcmp_unordered("uno", x, x)
    return e.select(pos, one, e.select(neg, e.neg(one), e.select(nan, x, zero)))


def _rsqrt_d(e, r):
    """d rsqrt(x) / dx from r = rsqrt(x): -r^3 / 2 (TensorFlow's RsqrtGrad); NaN where x < 0."""
    return e.mul(e.c(-0.5, r), e.mul(r, e.mul(r, r)))


def _register_unary(name, f, df):
    lowering("llvm", name)(lambda e, args, attrs: f(e, args[0], **attrs))
    lowering("llvm", f"{name}_grad")(lambda e, args, attrs: e.mul(args[1], df(e, args[0], **attrs)))


for _name, (_f, _df) in UNARY_LLVM.items():
    _register_unary(_name, _f, _df)

lowering("llvm", "sign")(lambda e, args, attrs: _sign(e, args[0]))
lowering("llvm", "floor")(lambda e, args, attrs: e.floor(args[0]))
lowering("llvm", "ceil")(lambda e, args, attrs: e.ceil(args[0]))
lowering("llvm", "round")(lambda e, args, attrs: e.roundeven(args[0]))


def _is_float(v):
    return v.type in (f32, f64)


def _arith(float_fn, int_fn):
    def lower(e, args, attrs):
        x, y = args
        return float_fn(e, x, y) if _is_float(x) else int_fn(e.b, x, y)
    return lower


lowering("llvm", "add")(_arith(lambda e, x, y: e.add(x, y), lambda b, x, y: b.add(x, y)))
lowering("llvm", "sub")(_arith(lambda e, x, y: e.sub(x, y), lambda b, x, y: b.sub(x, y)))
lowering("llvm", "mul")(_arith(lambda e, x, y: e.mul(x, y), lambda b, x, y: b.mul(x, y)))
lowering("llvm", "div")(_arith(lambda e, x, y: e.div(x, y), lambda b, x, y: b.sdiv(x, y)))
lowering("llvm", "maximum")(_arith(lambda e, x, y: e.maxf(x, y),
                                   lambda b, x, y: b.select(b.icmp_signed(">=", x, y), x, y)))
lowering("llvm", "minimum")(_arith(lambda e, x, y: e.minf(x, y),
                                   lambda b, x, y: b.select(b.icmp_signed("<=", x, y), x, y)))
lowering("llvm", "pow")(lambda e, args, attrs: e.pow(args[0], args[1]))
lowering("llvm", "bias_add")(lambda e, args, attrs: e.add(args[0], args[1]))


@lowering("llvm", "pow_grad_base")
def _pow_grad_base(e, args, attrs):
    x, y, dy = args
    return e.mul(dy, e.mul(y, e.pow(x, e.sub(y, e.c(1, y)))))


@lowering("llvm", "pow_grad_exponent")
def _pow_grad_exponent(e, args, attrs):
    x, y, dy = args
    positive = e.gt0(x)
    safe = e.select(positive, x, e.c(1, x))
    return e.select(positive, e.mul(dy, e.mul(e.pow(x, y), e.log(safe))), e.c(0, x))


_FCMP = {"greater": ">", "greater_equal": ">=", "less": "<", "less_equal": "<=", "equal": "==", "not_equal": "!="}


def _compare(op):
    def lower(e, args, attrs):
        x, y = args
        if _is_float(x):
            return (e.b.fcmp_unordered if op == "!=" else e.b.fcmp_ordered)(op, x, y)
        if x.type == i1:
            return e.b.icmp_unsigned(op, x, y)
        return e.b.icmp_signed(op, x, y)
    return lower


for _name in COMPARISONS:
    lowering("llvm", _name)(_compare(_FCMP[_name]))
lowering("llvm", "logical_and")(lambda e, args, attrs: e.b.and_(args[0], args[1]))
lowering("llvm", "logical_or")(lambda e, args, attrs: e.b.or_(args[0], args[1]))
lowering("llvm", "logical_not")(lambda e, args, attrs: e.b.not_(args[0]))
lowering("llvm", "where")(lambda e, args, attrs: e.b.select(args[0], args[1], args[2]))


@lowering("llvm", "cast")
def _cast(e, args, attrs):
    x, b = args[0], e.b
    to = REG_TYPE[attrs["dtype"]]
    if x.type == to:
        return x
    if _is_float(x):
        if to in (f32, f64):
            return b.fptrunc(x, to) if to == f32 else b.fpext(x, to)
        if to == i1:
            return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
        return b.fptosi(x, to)
    if x.type == i1:
        return b.uitofp(x, to) if to in (f32, f64) else b.zext(x, to)
    if to in (f32, f64):
        return b.sitofp(x, to)
    if to == i1:
        return b.icmp_signed("!=", x, ir.Constant(x.type, 0))
    return b.trunc(x, to) if to.width < x.type.width else b.sext(x, to)


@lowering("llvm", "clip")
def _clip(e, args, attrs):
    x = args[0]
    return e.minf(e.maxf(x, e.c(attrs["lo"], x)), e.c(attrs["hi"], x))


@lowering("llvm", "clip_grad")
def _clip_grad(e, args, attrs):
    x, dy = args
    inside = e.b.and_(e.b.fcmp_ordered(">=", x, e.c(attrs["lo"], x)), e.b.fcmp_ordered("<=", x, e.c(attrs["hi"], x)))
    return e.select(inside, dy, e.c(0, dy))


# ---- dropout: Philox4x32-10, counter (flat index, step, 0, 0), key (seed, 0) ----------------

def philox_uniform(b, index, step, seed):
    """The same uniform float as kcompiler.ops.nn_reference.philox_uniform, in IR."""
    def u32(v):
        return ir.Constant(i32, v & 0xFFFFFFFF)

    def mulhilo(a, m):
        p = b.mul(b.zext(a, i64), ir.Constant(i64, m))
        return b.trunc(b.lshr(p, c64(32)), i32), b.trunc(p, i32)

    c0, c1 = b.trunc(index, i32), b.trunc(step, i32)
    c2, c3 = u32(0), u32(0)
    k0, k1 = u32(seed), u32(0)
    for _ in range(10):
        hi0, lo0 = mulhilo(c0, 0xD2511F53)
        hi1, lo1 = mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
        k0, k1 = b.add(k0, u32(0x9E3779B9)), b.add(k1, u32(0xBB67AE85))
    return b.fmul(b.uitofp(b.lshr(c0, u32(8)), f32), ir.Constant(f32, 1.0 / (1 << 24)))


@lowering("llvm", "dropout")
def _dropout(e, args, attrs):
    x, step = args
    u = philox_uniform(e.b, e.flat_index, step, attrs["seed"])
    keep = e.b.fcmp_ordered(">=", u, ir.Constant(f32, attrs["rate"]))
    scaled = e.div(x, e.c(1 - attrs["rate"], x))
    return e.select(keep, scaled, e.c(0, x))


def missing_elementwise_lowerings():
    return sorted(n for n, op in all_ops().items()
                  if op.kind == "elementwise" and n != "fused" and "llvm" not in op.lowerings)
