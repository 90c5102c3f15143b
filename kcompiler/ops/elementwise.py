"""Element-wise ops: unary math and activations, binary arithmetic with broadcasting,
comparisons, select, cast and clip.

Every unary op ``f`` has a companion ``f_grad(x, dy) = dy * f'(x)``: the VJP emits it,
so a backward kernel is one fused element-wise pass and each op's derivative is
written once (its numpy form in elementwise_reference.py, its scalar code in the
lowerings).
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType
from .common import broadcast_shapes, expect_float, same_type

# name -> default attrs. The reference file gives f and f' for each.
UNARY = {
    "neg": {}, "exp": {}, "log": {}, "sqrt": {}, "rsqrt": {}, "square": {}, "abs": {},
    "reciprocal": {}, "sin": {}, "cos": {}, "log1p": {}, "expm1": {},
    "tanh": {}, "sigmoid": {}, "relu": {}, "elu": {"alpha": 1.0}, "selu": {},
    "softplus": {}, "softsign": {}, "silu": {}, "gelu": {"approximate": False},
    "hard_sigmoid": {}, "leaky_relu": {"negative_slope": 0.2}, "relu6": {},
}
# Ops whose derivative is zero almost everywhere: no gradient flows.
UNARY_NO_GRAD = ("sign", "floor", "round", "ceil")


def _float_unary(name):
    def rule(in_types, attrs):
        expect_float(name, in_types[0])
        return same_type(in_types, attrs)
    return rule


# relu'(x) = [x > 0] = [relu(x) > 0]: the gradient can read the output instead of the input,
# so the producer of x (a bias_add) has one consumer and fuses with the relu.
READS_OUTPUT = ("relu",)


def _unary_vjp(name):
    def vjp(b, nid, dy):
        (x,) = b.operands(nid)
        return [b.add(f"{name}_grad", (nid if name in READS_OUTPUT else x, dy), b.attrs(nid))]
    return vjp


def _grad_rule(name):
    def rule(in_types, attrs):
        x, dy = in_types
        if x.shape != dy.shape and None not in x.shape + dy.shape:
            raise ShapeError(f"{name}_grad: x {x.shape} and dy {dy.shape} differ")
        return TensorType(x.shape, x.dtype)
    return rule


for _name in UNARY:
    register(_name, shape=_float_unary(_name), vjp=_unary_vjp(_name), kind="elementwise")
    register(f"{_name}_grad", shape=_grad_rule(_name), kind="elementwise",
             doc=f"dy * {_name}'(x)")
for _name in UNARY_NO_GRAD:
    register(_name, shape=same_type, vjp=lambda b, nid, dy: [None], kind="elementwise")


# ---- binary arithmetic with numpy broadcasting -------------------------------------

def _binary_rule(name):
    def rule(in_types, attrs):
        a, c = in_types
        if a.dtype != c.dtype:
            raise ShapeError(f"{name}: operand dtypes differ ({a.dtype} and {c.dtype})")
        return TensorType(broadcast_shapes(name, a.shape, c.shape), a.dtype)
    return rule


def unbroadcast(b, g, shape):
    """Sum cotangent ``g`` down to ``shape`` (the VJP of broadcasting)."""
    gshape = b.shape(g)
    if tuple(gshape) == tuple(shape):
        return g
    lead = len(gshape) - len(shape)
    axes = list(range(lead))
    axes += [lead + i for i, d in enumerate(shape) if d == 1 and gshape[lead + i] != 1]
    if axes:
        g = b.op("sum", g, axes=tuple(axes), keepdims=False)
    return b.op("reshape", g, shape=tuple(shape)) if tuple(b.shape(g)) != tuple(shape) else g


def _add_vjp(b, nid, dy):
    x, y = b.operands(nid)
    return [unbroadcast(b, dy, b.shape(x)), unbroadcast(b, dy, b.shape(y))]


def _sub_vjp(b, nid, dy):
    x, y = b.operands(nid)
    return [unbroadcast(b, dy, b.shape(x)), unbroadcast(b, b.op("neg", dy), b.shape(y))]


def _mul_vjp(b, nid, dy):
    x, y = b.operands(nid)
    return [unbroadcast(b, b.op("mul", dy, y), b.shape(x)), unbroadcast(b, b.op("mul", dy, x), b.shape(y))]


def _div_vjp(b, nid, dy):
    x, y = b.operands(nid)
    gx = b.op("div", dy, y)
    gy = b.op("neg", b.op("div", b.op("mul", gx, x), y))  # -dy * x / y^2
    return [unbroadcast(b, gx, b.shape(x)), unbroadcast(b, gy, b.shape(y))]


def _minmax_vjp(pick_first_op):
    def vjp(b, nid, dy):
        x, y = b.operands(nid)
        first = b.op(pick_first_op, x, y)  # where x wins (ties go to x, as TF does)
        zero = b.scalar(0.0, b.dtype(dy))
        gx = b.op("where", first, dy, zero)
        gy = b.op("where", first, zero, dy)
        return [unbroadcast(b, gx, b.shape(x)), unbroadcast(b, gy, b.shape(y))]
    return vjp


def _pow_vjp(b, nid, dy):
    x, y = b.operands(nid)
    gx = b.op("pow_grad_base", x, y, dy)
    gy = b.op("pow_grad_exponent", x, y, dy)
    return [unbroadcast(b, gx, b.shape(x)), unbroadcast(b, gy, b.shape(y))]


register("add", shape=_binary_rule("add"), vjp=_add_vjp, kind="elementwise")
register("sub", shape=_binary_rule("sub"), vjp=_sub_vjp, kind="elementwise")
register("mul", shape=_binary_rule("mul"), vjp=_mul_vjp, kind="elementwise")
register("div", shape=_binary_rule("div"), vjp=_div_vjp, kind="elementwise")
register("maximum", shape=_binary_rule("maximum"), vjp=_minmax_vjp("greater_equal"), kind="elementwise")
register("minimum", shape=_binary_rule("minimum"), vjp=_minmax_vjp("less_equal"), kind="elementwise")
register("pow", shape=_binary_rule("pow"), vjp=_pow_vjp, kind="elementwise")


def _ternary_rule(name):
    def rule(in_types, attrs):
        return TensorType(broadcast_shapes(name, *(t.shape for t in in_types)), in_types[0].dtype)
    return rule


register("pow_grad_base", shape=_ternary_rule("pow_grad_base"), kind="elementwise", doc="dy * y * x^(y-1)")
register("pow_grad_exponent", shape=_ternary_rule("pow_grad_exponent"), kind="elementwise",
         doc="dy * x^y * log(x), 0 where x <= 0")


# ---- comparisons, select, cast, clip ---------------------------------------------------

def _compare_rule(name):
    def rule(in_types, attrs):
        a, c = in_types
        if a.dtype != c.dtype:
            raise ShapeError(f"{name}: operand dtypes differ ({a.dtype} and {c.dtype})")
        return TensorType(broadcast_shapes(name, a.shape, c.shape), "bool")
    return rule


COMPARISONS = ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal")
for _name in COMPARISONS:
    register(_name, shape=_compare_rule(_name), kind="elementwise")
register("logical_and", shape=_compare_rule("logical_and"), kind="elementwise")
register("logical_or", shape=_compare_rule("logical_or"), kind="elementwise")
register("logical_not", shape=lambda t, a: TensorType(t[0].shape, "bool"), kind="elementwise")


def _where_rule(in_types, attrs):
    c, x, y = in_types
    if c.dtype != "bool":
        raise ShapeError(f"where: the condition must be bool, got {c.dtype}")
    if x.dtype != y.dtype:
        raise ShapeError(f"where: branch dtypes differ ({x.dtype} and {y.dtype})")
    return TensorType(broadcast_shapes("where", c.shape, x.shape, y.shape), x.dtype)


def _where_vjp(b, nid, dy):
    c, x, y = b.operands(nid)
    zero = b.scalar(0.0, b.dtype(dy))
    return [None, unbroadcast(b, b.op("where", c, dy, zero), b.shape(x)),
            unbroadcast(b, b.op("where", c, zero, dy), b.shape(y))]


register("where", shape=_where_rule, vjp=_where_vjp, kind="elementwise")


def _cast_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    if not b.dtype(x).startswith("float"):
        return [None]
    return [b.op("cast", dy, dtype=b.dtype(x))]


register("cast", shape=lambda t, a: TensorType(t[0].shape, a["dtype"]), vjp=_cast_vjp, kind="elementwise")


def _clip_vjp(b, nid, dy):
    (x,) = b.operands(nid)
    return [b.add("clip_grad", (x, dy), b.attrs(nid))]


register("clip", shape=_float_unary("clip"), vjp=_clip_vjp, kind="elementwise",
         doc="min(max(x, attrs.lo), attrs.hi)")
register("clip_grad", shape=_grad_rule("clip"), kind="elementwise", doc="dy where lo <= x <= hi, else 0")
