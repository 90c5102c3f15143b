"""The LLVM spelling of the scalar primitives: how one float value is computed in IR.

``ScalarEmitter`` wraps an IR builder with float arithmetic, NaN-propagating max/min and the
math functions (LLVM intrinsics, libm, and inline polynomials for float32 exp and tanh, so
loops using them vectorise). Every method also takes float32 vectors (``<N x float>``), lane
by lane with the same instructions, hence bit for bit the scalar results: kernels that
vectorise by hand (the recurrent cells) use it so. libm functions without a vector form
(log1p, expm1, erf) are then called once per lane. The description renderer (render.py) spells the primitives of
schedule/kernel.py with it; the element-wise ops themselves are defined once, target-neutrally,
in schedule/scalar.py. The templates (pooling, reductions, recurrent cells) use it directly.
"""
import llvmlite.ir as ir

from .irutil import f32, i32, intrinsic


def _lanes(t):
    """The lane count of a vector type, 0 for a scalar."""
    return t.count if isinstance(t, ir.VectorType) else 0


def _like(t, element):
    """``element`` (an IR type), as a vector when ``t`` is one."""
    return ir.VectorType(element, t.count) if isinstance(t, ir.VectorType) else element


def _element(t):
    return t.element if isinstance(t, ir.VectorType) else t


class ScalarEmitter:
    def __init__(self, b):
        self.b = b

    # constants and arithmetic in the type of a value
    def c(self, v, like):
        t = like.type
        return ir.Constant(t, [float(v)] * t.count) if _lanes(t) else ir.Constant(t, float(v))

    def add(self, x, y): return self.b.fadd(x, y)
    def sub(self, x, y): return self.b.fsub(x, y)
    def mul(self, x, y): return self.b.fmul(x, y)
    def div(self, x, y): return self.b.fdiv(x, y)
    def neg(self, x): return self.b.fneg(x)

    def _fname(self, base, x):
        suffix = "f32" if _element(x.type) == f32 else "f64"
        n = _lanes(x.type)
        return f"llvm.{base}.{f'v{n}' if n else ''}{suffix}"

    def _libm(self, base, x):
        name = base + ("f" if _element(x.type) == f32 else "")
        n = _lanes(x.type)
        if not n:
            return intrinsic(self.b, name, x.type, [x])
        out = ir.Constant(x.type, ir.Undefined)  # no vector libm: one call per lane
        for k in range(n):
            lane = ir.Constant(i32, k)
            v = intrinsic(self.b, name, x.type.element, [self.b.extract_element(x, lane)])
            out = self.b.insert_element(out, v, lane)
        return out

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
    # vectorise. Their steps are fused multiply-adds (llvm.fma: one rounding, the same bits on
    # every host; a fifth fewer instructions than separate multiplies and adds).
    def exp(self, x):
        if _element(x.type) != f32:
            return intrinsic(self.b, self._fname("exp", x), x.type, [x])
        b = self.b
        # exp(x) = 2^n * e^r, n = round(x / ln 2), |r| <= ln2 / 2; clamped where the result
        # is 0 or inf anyway. A NaN fails both ordered compares and passes through: the
        # maxf/minf of a constant in one compare and select each (maxps/minps on x86)
        lo, hi = self.c(-104.0, x), self.c(89.0, x)
        v = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
        n = self.floor(self.fma(v, self.c(1.44269504088896341, x), self.c(0.5, x)))
        r = self.fma(n, self.c(-0.693359375, x), v)
        r = self.fma(n, self.c(2.12194440e-4, x), r)
        p = self.c(1.9875691500e-4, x)
        for coeff in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = self.fma(p, r, self.c(coeff, x))
        y = self.add(self.fma(p, self.mul(r, r), r), self.c(1.0, x))
        # 2^n as two powers of two, each a normal float for n in [-150, 129]; a NaN x gives a NaN
        # y, and n must then not reach fptosi (its result would be poison)
        int_t = _like(x.type, i32)
        ci = lambda v: ir.Constant(int_t, [v] * int_t.count if _lanes(int_t) else v)  # noqa: E731
        ni = b.fptosi(self.select(b.fcmp_ordered("ord", n, n), n, self.c(0.0, x)), int_t)
        n1 = b.ashr(ni, ci(1))
        scale = [b.bitcast(b.shl(b.add(k, ci(127)), ci(23)), x.type) for k in (n1, b.sub(ni, n1))]
        return self.mul(self.mul(y, scale[0]), scale[1])

    def tanh(self, x):
        if _element(x.type) != f32:
            return self._libm("tanh", x)
        z = self.fabs(x)
        # |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1) with the sign of x; below: an odd polynomial
        big = self.sub(self.c(1.0, x), self.div(self.c(2.0, x), self.add(self.exp(self.add(z, z)), self.c(1.0, x))))
        big = self.select(self.b.fcmp_ordered("<", x, self.c(0.0, x)), self.neg(big), big)
        x2 = self.mul(x, x)
        p = self.c(-5.70498872745e-3, x)
        for coeff in (2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1):
            p = self.fma(p, x2, self.c(coeff, x))
        small = self.fma(self.mul(p, x2), x, x)
        return self.select(self.b.fcmp_unordered("<", z, self.c(0.625, x)), small, big)

    def fma(self, x, y, z):
        return intrinsic(self.b, self._fname("fma", x), x.type, [x, y, z])

    def pow(self, x, y):
        return intrinsic(self.b, self._fname("pow", x), x.type, [x, y])

    def maxf(self, x, y):
        # numpy's maximum propagates NaN from either side
        return self.b.select(self.b.fcmp_ordered(">=", x, y), x, self.b.select(self.b.fcmp_unordered("uno", x, x), x, y))

    def minf(self, x, y):
        return self.b.select(self.b.fcmp_ordered("<=", x, y), x, self.b.select(self.b.fcmp_unordered("uno", x, x), x, y))

    def select(self, cond, x, y):
        return self.b.select(cond, x, y)

    def sigmoid(self, x):
        # 1 / (1 + e) for x >= 0, e / (1 + e) below (schedule/scalar.py): one division, the
        # numerator chosen first, gives the same bits as choosing between the two quotients
        e = self.exp(self.neg(self.fabs(x)))
        one = self.c(1, x)
        numerator = self.select(self.b.fcmp_ordered(">=", x, self.c(0, x)), one, e)
        return self.div(numerator, self.add(one, e))
