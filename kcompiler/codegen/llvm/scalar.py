"""The LLVM spelling of the scalar primitives: how one float value is computed in IR.

``ScalarEmitter`` wraps an IR builder with float arithmetic, NaN-propagating max/min and the
math functions (LLVM intrinsics, libm, and inline polynomials for float32 exp and tanh, so
loops using them vectorise). The description renderer (render.py) spells the primitives of
schedule/kernel.py with it; the element-wise ops themselves are defined once, target-neutrally,
in schedule/scalar.py. The templates (pooling, reductions, recurrent cells) use it directly.
"""
import llvmlite.ir as ir

from .irutil import f32, i32, intrinsic


class ScalarEmitter:
    def __init__(self, b):
        self.b = b

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

    def select(self, cond, x, y):
        return self.b.select(cond, x, y)

    def sigmoid(self, x):
        e = self.exp(self.neg(self.fabs(x)))
        one = self.c(1, x)
        pos = self.div(one, self.add(one, e))
        neg = self.div(e, self.add(one, e))
        return self.select(self.b.fcmp_ordered(">=", x, self.c(0, x)), pos, neg)
