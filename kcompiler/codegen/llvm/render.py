"""Renders a target-neutral kernel description (kcompiler/schedule/kernel.py) as LLVM IR.

``render(k, kernel)`` emits the statements of ``kernel`` into KernelBuilder ``k``, whose
typed buffer pointers stand for the description's buffers (outputs, then inputs). Loops
become counted i64 loops (LLVM vectorises the innermost), locals live in entry-block allocas
(promoted to registers by mem2reg), a ``Call`` of a primitive is one or a few instructions,
and a ``Call`` of a registry op is rendered through its neutral scalar definition
(schedule/scalar.py) unless ``NATIVE`` spells it here. Within one block, a subexpression met
again is reused rather than emitted twice (except loads of buffers the kernel writes and
expressions reading locals, whose values change).
"""
import llvmlite.ir as ir

from ...schedule.kernel import PRIMITIVES, Assign, Call, Const, Fail, If, Load, Local, Loop, Store, Var, call
from ...schedule.scalar import expand
from .irutil import REG_TYPE, c64, const, for_range, i32, i64, load, store
from .scalar import ScalarEmitter

_FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _is_float(dtype):
    return dtype.startswith("float")


def _reg(dtype):
    return i32 if dtype == "uint32" else REG_TYPE[dtype]


class Renderer:
    def __init__(self, k, kernel):
        self.k, self.b = k, k.b
        pointers = list(k.outputs) + list(k.inputs)
        self.pointers = {buf.name: p for buf, p in zip(kernel.buffers, pointers)}
        self.dtypes = {buf.name: buf.dtype for buf in kernel.buffers}
        self.written = set()
        _collect_stores(kernel.body, self.written)
        self.indices = {}        # loop variable name -> i64 value
        self.locals = {}         # local name -> alloca
        self.cache = {}          # Expr -> value, for the current block
        self.e = ScalarEmitter(self.b)
        self.entry_block = k.function.entry_basic_block

    # ---- statements ---------------------------------------------------------------------------

    def body(self, statements):
        for s in statements:
            getattr(self, "stmt_" + type(s).__name__)(s)

    def _scoped(self, fn):
        saved = dict(self.cache)
        fn()
        self.cache = saved

    def stmt_Loop(self, s):
        with for_range(self.b, s.extent, name=s.var.name) as i:
            self.indices[s.var.name] = i
            self._scoped(lambda: self.body(s.body))
            del self.indices[s.var.name]

    def stmt_Store(self, s):
        store(self.b, self.expr(s.value), self.pointers[s.buffer], self.expr(s.index), self.dtypes[s.buffer])

    def stmt_Local(self, s):
        b = self.b
        with b.goto_block(self.entry_block):
            b.position_at_start(self.entry_block)
            slot = b.alloca(_reg(s.var.dtype), name=s.var.name)
        self.locals[s.var.name] = slot
        b.store(self.expr(s.init), slot)

    def stmt_Assign(self, s):
        self.b.store(self.expr(s.value), self.locals[s.var.name])

    def stmt_If(self, s):
        cond = self.expr(s.cond)
        if s.orelse:
            with self.b.if_else(cond) as (then, otherwise):
                with then:
                    self._scoped(lambda: self.body(s.then))
                with otherwise:
                    self._scoped(lambda: self.body(s.orelse))
        else:
            with self.b.if_then(cond):
                self._scoped(lambda: self.body(s.then))

    def stmt_Fail(self, s):
        self.k.fail(s.code, self._as_i64(self.expr(s.value), s.value.dtype))

    def _as_i64(self, v, dtype):
        if v.type == i64:
            return v
        if _is_float(dtype):
            return self.b.fptosi(v, i64)
        return self.b.zext(v, i64) if dtype in ("bool", "uint32") else self.b.sext(v, i64)

    # ---- expressions --------------------------------------------------------------------------

    def expr(self, e):
        if isinstance(e, Const):
            return ir.Constant(i32, int(e.value) & 0xFFFFFFFF) if e.dtype == "uint32" else const(e.value, e.dtype)
        if isinstance(e, Var):
            if e.name in self.locals:
                return self.b.load(self.locals[e.name])
            return self.indices[e.name]
        hit = self.cache.get(e)
        if hit is not None:
            return hit
        if isinstance(e, Load):
            value = load(self.b, self.pointers[e.buffer], self.expr(e.index), e.dtype)
            if e.buffer in self.written:
                return value
        elif e.op in NATIVE:
            value = NATIVE[e.op](self, e, [self.expr(a) for a in e.args])
        elif e.op in PRIMITIVES:
            value = self.primitive(e, [self.expr(a) for a in e.args])
        else:
            value = self.expr(expand(e))
        if not self.locals or not _mentions_any(e, self.locals):  # a local's value changes with each Assign
            self.cache[e] = value
        return value

    def primitive(self, e, args):
        b, s, op = self.b, self.e, e.op
        dtype = e.args[0].dtype
        if op == "umulhi" or (op == "mul" and dtype == "uint32"):
            return self._wide_product(e, args)
        if op in ("add", "sub", "mul", "div"):
            x, y = args
            if _is_float(dtype):
                return getattr(s, op)(x, y)
            if op == "div":
                return b.udiv(x, y) if dtype == "uint32" else b.sdiv(x, y)
            return getattr(b, op)(x, y)
        if op == "mod":
            return b.urem(*args) if dtype == "uint32" else b.srem(*args)
        if op == "neg":
            return s.neg(args[0]) if _is_float(dtype) else b.neg(args[0])
        if op in ("max", "min"):
            x, y = args
            if _is_float(dtype):
                return s.maxf(x, y) if op == "max" else s.minf(x, y)
            cmp = b.icmp_unsigned if dtype in ("uint32", "bool") else b.icmp_signed
            return b.select(cmp(">=" if op == "max" else "<=", x, y), x, y)
        if op in _FCMP:
            x, y = args
            if _is_float(dtype):
                return (b.fcmp_unordered if op == "ne" else b.fcmp_ordered)(_FCMP[op], x, y)
            cmp = b.icmp_unsigned if dtype in ("uint32", "bool") else b.icmp_signed
            return cmp(_FCMP[op], x, y)
        if op == "isnan":
            return b.fcmp_unordered("uno", args[0], args[0])
        if op == "and":
            return b.and_(*args)
        if op == "or":
            return b.or_(*args)
        if op == "xor":
            return b.xor(*args)
        if op == "not":
            return b.not_(args[0])
        if op == "shl":
            return b.shl(*args)
        if op == "shr":
            return b.lshr(*args) if dtype == "uint32" else b.ashr(*args)
        if op == "select":
            return b.select(*args)
        if op == "cast":
            return _cast(b, args[0], dtype, e.dtype)
        if op == "round":
            return s.roundeven(args[0])
        if op == "abs":
            return s.fabs(args[0])
        return getattr(s, op)(*args)  # exp, log, sqrt, floor, ceil, sin, cos, tanh, log1p, expm1, erf, pow

    def _wide_product(self, e, args):
        """A uint32 ``mul`` or ``umulhi``: a word of the 64-bit product, the other word cached for
        the same operands. Philox's mulhilo then costs one multiply: LLVM would not merge a
        separate 32-bit multiply for the low word (a third slower dropout kernel)."""
        b = self.b
        product = b.mul(b.zext(args[0], i64), b.zext(args[1], i64))
        words = {"umulhi": b.trunc(b.lshr(product, c64(32)), i32), "mul": b.trunc(product, i32)}
        if not self.locals or not _mentions_any(e, self.locals):
            for op, word in words.items():
                self.cache[Call(op, e.args, (), "uint32")] = word
        return words[e.op]


def _cast(b, x, src, dst):
    to = _reg(dst)
    if src == dst:
        return x
    if _is_float(src):
        if _is_float(dst):
            return b.fptrunc(x, to) if dst == "float32" else b.fpext(x, to)
        if dst == "bool":
            return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
        return b.fptoui(x, to) if dst == "uint32" else b.fptosi(x, to)
    unsigned = src in ("bool", "uint32")
    if _is_float(dst):
        return b.uitofp(x, to) if unsigned else b.sitofp(x, to)
    if dst == "bool":
        return b.icmp_signed("!=", x, ir.Constant(x.type, 0))
    if to.width == x.type.width:
        return x
    if to.width < x.type.width:
        return b.trunc(x, to)
    return b.zext(x, to) if unsigned else b.sext(x, to)


# Ops this backend spells natively instead of through their neutral definition:
# op -> fn(renderer, call, rendered args) -> value.
NATIVE = {
    "sigmoid": lambda r, e, args: r.e.sigmoid(args[0]),
}


def _collect_stores(statements, out):
    for s in statements:
        if isinstance(s, Store):
            out.add(s.buffer)
        for part in ("body", "then", "orelse"):
            _collect_stores(getattr(s, part, ()), out)


def _mentions_any(e, names):
    """Whether expression ``e`` reads one of the locals ``names`` (its value may have changed)."""
    if isinstance(e, Var):
        return e.name in names
    if isinstance(e, Load):
        return _mentions_any(e.index, names)
    if isinstance(e, Call):
        return any(_mentions_any(a, names) for a in e.args)
    return False


def render(k, kernel):
    """Emit ``kernel``'s body into KernelBuilder ``k``."""
    Renderer(k, kernel).body(kernel.body)


class ValueRenderer(Renderer):
    """Renders expressions at a builder's position outside any kernel description (the
    templates: epilogues, recurrent gates): a ``Var`` stands for an LLVM value the caller
    computed (``values``, or bound later with ``bind``), a ``Load`` reads one of the caller's
    ``pointers`` ({buffer name: (typed pointer, dtype)})."""

    def __init__(self, b, values=(), pointers=()):
        self.k, self.b = None, b
        self.pointers = {name: p for name, (p, _) in dict(pointers).items()}
        self.dtypes = {name: dtype for name, (_, dtype) in dict(pointers).items()}
        self.written = set()
        self.indices = dict(values)
        self.locals = {}
        self.cache = {}
        self.e = ScalarEmitter(b)

    def bind(self, name, e):
        """Emit ``e`` now; later expressions read its value as ``Var(name)``."""
        self.indices[name] = self.expr(e)
        return Var(name, e.dtype)


_DTYPE_OF = {"float": "float32", "double": "float64", "i1": "bool", "i32": "int32", "i64": "int64"}


def scalar(b, op, args, **attrs):
    """Element-wise op ``op`` over the LLVM values ``args``, emitted at ``b``'s position from
    its neutral definition (or its NATIVE spelling)."""
    names = [Var(f"a{i}", _DTYPE_OF[str(v.type)]) for i, v in enumerate(args)]
    return ValueRenderer(b, {n.name: v for n, v in zip(names, args)}).expr(call(op, *names, **attrs))
