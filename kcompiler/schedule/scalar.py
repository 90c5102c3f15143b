"""Scalar math written once: the value of every element-wise op (and its ``_grad`` companion,
dy * f'(x)) as an expression over the primitives of ``schedule/kernel.py``.

A definition is ``fn(args, attrs) -> Expr``: ``args`` are the operand expressions. Backends
render a ``Call`` of a registry op by expanding it through its definition, unless they spell
the op natively (a CUDA intrinsic, an LLVM intrinsic): the renderer asks ``expand`` only for
the ops it does not know. The numpy references (kcompiler/ops/*_reference.py) stay the judge:
the kernel tests compare every definition, rendered by each backend, against them.
"""
from .kernel import Const, call

DEFINITIONS = {}


def define(name):
    def attach(fn):
        if name in DEFINITIONS:
            raise ValueError(f"scalar definition of {name!r} given twice")
        DEFINITIONS[name] = fn
        return fn
    return attach


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


# ---- arithmetic and comparisons that map one to one onto primitives -----------------------------

for _op, _prim in {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "bias_add": "add",
                   "maximum": "max", "minimum": "min", "pow": "pow", "greater": "gt", "greater_equal": "ge",
                   "less": "lt", "less_equal": "le", "equal": "eq", "not_equal": "ne", "logical_and": "and",
                   "logical_or": "or"}.items():
    define(_op)(lambda args, attrs, _prim=_prim: call(_prim, *args))

define("logical_not")(lambda args, attrs: call("not", args[0]))
define("where")(lambda args, attrs: call("select", *args))
define("cast")(lambda args, attrs: call("cast", args[0], dtype=attrs["dtype"]))


@define("relu")
def relu(args, attrs):
    (x,) = args
    # relu(NaN) is NaN (np.maximum, TensorFlow on the CPU): "x > 0 or NaN" keeps x
    return call("select", call("or", call("gt", x, c(0, x)), call("isnan", x)), x, c(0, x))


@define("relu_grad")
def relu_grad(args, attrs):
    x, dy = args
    return call("mul", dy, call("select", call("gt", x, c(0, x)), c(1, x), c(0, x)))
