"""Renders a target-neutral kernel description (kcompiler/schedule/kernel.py) as LLVM IR.

``render(k, kernel)`` emits the statements of ``kernel`` into KernelBuilder ``k``, whose
typed buffer pointers stand for the description's buffers (outputs, then inputs). Loops
become counted i64 loops (LLVM vectorises the innermost), locals live in entry-block allocas
(promoted to registers by mem2reg), a ``Call`` of a primitive is one or a few instructions,
and a ``Call`` of a registry op is rendered through its neutral scalar definition
(schedule/scalar.py) unless ``NATIVE`` spells it here. Within one block, a subexpression met
again is reused rather than emitted twice (except loads of buffers the kernel writes and
expressions reading locals, whose values change). A parallel loop at the top of the kernel
with enough work is split over the cores (``Renderer.split_over_cores``).
"""
import llvmlite.ir as ir

from ...schedule.kernel import PRIMITIVES, AtomicAdd, Call, Const, Fail, If, Load, Loop, Store, Var, call, varies, written_buffers
from ...schedule.scalar import expand
from .conv import parts_for, run_parts, split
from .irutil import REG_TYPE, bounds_checking, c64, const, for_range, i32, i64, intrinsic, load, register_buffer, store
from .scalar import ScalarEmitter

_FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}

# A parallel loop is split over the cores only when it makes at least this many buffer accesses
# in all (~5-10 us on one core). When every call started its threads (~20 us) the threshold was
# 2^20: at 0.5-1.0M accesses two parts ran 0.8-1.0x as fast as one. With the pool's helpers
# (threads.py, ~1 us a call) W2's and W3's second pooling gradient (0.5M accesses) runs 2-2.8x
# faster on two cores.
PARALLEL_MIN_ACCESSES = 1 << 17


def _is_float(dtype):
    return dtype.startswith("float")


def _reg(dtype):
    return i32 if dtype == "uint32" else REG_TYPE[dtype]


class Renderer:
    def __init__(self, k, kernel):
        self.k, self.b, self.kernel = k, k.b, kernel
        pointers = list(k.outputs) + list(k.inputs)
        self.pointers = {buf.name: p for buf, p in zip(kernel.buffers, pointers)}
        self.dtypes = {buf.name: buf.dtype for buf in kernel.buffers}
        self.written = written_buffers(kernel.body)
        self.indices = {}        # loop variable name -> i64 value
        self.locals = {}         # local name -> alloca
        self.outer_locals = set()  # locals declared outside every loop
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
        nparts = 1
        if s.parallel and not self.indices and not self.outer_locals and not _holds(s.body, (Fail, AtomicAdd)):
            nparts = parts_for(s.extent * _accesses(s.body), s.extent, PARALLEL_MIN_ACCESSES)
        if nparts > 1:
            self.split_over_cores(s, nparts)
        else:
            self.loop(s, 0, s.extent)

    def loop(self, s, start, stop):
        with for_range(self.b, stop, start=start, name=s.var.name) as i:
            self.indices[s.var.name] = i
            self._scoped(lambda: self.body(s.body))
            del self.indices[s.var.name]

    def split_over_cores(self, s, nparts):
        """Run parallel loop ``s`` as ``nparts`` parts at once (conv.run_parts, threads.py), each
        over a contiguous sub-range of its iterations. Only a loop outside every other loop, with
        no local declared before it outside the loops, is split (its body then needs nothing but
        the buffers), and not one that may Fail (parts would race on the error record) or add
        atomically (the adds are plain here, and serial adds keep the reference's order).

        The loop over a sub-range is a function of its own, ``<kernel>.range(buffers, status,
        lo, hi)``, whose outputs are ``noalias`` as the kernel's are; each part calls it (LLVM
        inlines it, keeping that as alias metadata). The pointers a part function loads from its
        context record carry no such promise, and without it LLVM fully unrolled the channel loop
        of the pooling gradients and left it scalar (2x slower on two cores than on one)."""
        k = self.k
        pointers = list(k.outputs) + list(k.inputs)
        fnty = ir.FunctionType(ir.VoidType(), [p.type for p in pointers] + [k.status.type, i64, i64])
        fn = ir.Function(k.module, fnty, name=k.module.get_unique_name(f"{k.function.name}.range"))
        fn.linkage = "internal"
        for a in fn.args[:len(k.outputs)]:
            a.add_attribute("noalias")
        *buffers, status, lo, hi = fn.args
        if bounds_checking():
            sizes = k.buffer_sizes()
            for a, p in zip(buffers, pointers):
                register_buffer(a, sizes[id(p)], status)
        sub = RangeBuilder(ir.IRBuilder(fn.append_basic_block("entry")), status, buffers, len(k.outputs))
        Renderer(sub, self.kernel).loop(s, lo, hi)
        sub.b.ret_void()

        def part_body(p):
            p.b.call(fn, list(p.buffers) + [p.status, *split(p.b, p.index, p.count, s.extent, 1)])

        run_parts(k, pointers, nparts, part_body)

    def stmt_Store(self, s):
        store(self.b, self.expr(s.value), self.pointers[s.buffer], self.expr(s.index), self.dtypes[s.buffer])

    def stmt_AtomicAdd(self, s):
        # A loop holding an atomic add is never split over the cores (stmt_Loop): it runs
        # serially, so the add needs no atomic instruction.
        dtype, ptr, index = self.dtypes[s.buffer], self.pointers[s.buffer], self.expr(s.index)
        old, value = load(self.b, ptr, index, dtype), self.expr(s.value)
        store(self.b, self.e.add(old, value) if _is_float(dtype) else self.b.add(old, value), ptr, index, dtype)

    def stmt_Local(self, s):
        b = self.b
        with b.goto_block(self.entry_block):
            b.position_at_start(self.entry_block)
            slot = b.alloca(_reg(s.var.dtype), name=s.var.name)
        self.locals[s.var.name] = slot
        if not self.indices:
            self.outer_locals.add(s.var.name)
        b.store(self.expr(s.init), slot)

    def stmt_Assign(self, s):
        value = s.value
        if s.reorder and _is_float(s.var.dtype) and isinstance(value, Call) and value.args[0] == s.var:
            value = self._reordered(value.op, self.expr(value.args[0]), self.expr(value.args[1]))
        else:
            value = self.expr(value)
        self.b.store(value, self.locals[s.var.name])

    def _reordered(self, op, acc, x):
        """``op(acc, x)`` of a reduction whose order does not matter (Assign.reorder), in the form
        LLVM's loop vectoriser turns into a vector of partial results: an ``fadd`` that may be
        reassociated, ``llvm.maximum``/``llvm.minimum`` (NaN-propagating, as the primitives)."""
        if op == "add":
            return self.b.fadd(acc, x, flags=("reassoc", "nsz"))
        if op in ("max", "min"):
            name = f"llvm.{'maximum' if op == 'max' else 'minimum'}.{'f32' if acc.type == ir.FloatType() else 'f64'}"
            return intrinsic(self.b, name, acc.type, [acc, x])
        raise ValueError(f"a reduction in any order combines with add, max or min, not {op}")

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
            return self.constant(e)
        if isinstance(e, Var):
            if e.name in self.locals:
                return self.b.load(self.locals[e.name])
            return self.indices[e.name]
        hit = self.cache.get(e)
        if hit is not None:
            return hit
        if isinstance(e, Load):
            value = load(self.b, self.pointers[e.buffer], self.expr(e.index), e.dtype)
        elif e.op in NATIVE:
            value = NATIVE[e.op](self, e, [self.expr(a) for a in e.args])
        elif e.op in PRIMITIVES:
            value = self.primitive(e, [self.expr(a) for a in e.args])
        else:
            value = self.expr(expand(e))
        if not varies(e, self.locals, self.written):  # reusable: reads nothing a statement changes
            self.cache[e] = value
        return value

    def constant(self, e):
        return ir.Constant(i32, int(e.value) & 0xFFFFFFFF) if e.dtype == "uint32" else const(e.value, e.dtype)

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
        if not varies(e, self.locals, self.written):
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


class RangeBuilder:
    """What a Renderer uses of a KernelBuilder, for a function of its own that renders part of
    a description (the range function of a split loop; a weight gradient's dy producer,
    epilogue.DyProducer): neither fails."""

    def __init__(self, b, status, buffers, n_outputs):
        self.b, self.status, self.function = b, status, b.function
        self.outputs, self.inputs = buffers[:n_outputs], buffers[n_outputs:]


def _accesses(statements):
    """Buffer loads and stores the statements make (loops multiplied out, both branches of an If
    counted, a load met twice in one block counted once)."""
    loads, total = set(), 0
    for s in statements:
        if isinstance(s, Loop):
            total += s.extent * _accesses(s.body)
        elif isinstance(s, If):
            total += _accesses(s.then) + _accesses(s.orelse)
        elif isinstance(s, Store):
            total += 1
        for e in (getattr(s, name, None) for name in ("cond", "index", "value", "init")):
            _collect_loads(e, loads)
    return total + len(loads)


def _collect_loads(e, out):
    if isinstance(e, Load):
        out.add(e)
        _collect_loads(e.index, out)
    elif isinstance(e, Call):
        for a in e.args:
            _collect_loads(a, out)


def _holds(statements, kinds):
    """Whether ``statements`` hold a statement of one of ``kinds``, at any depth."""
    return any(isinstance(s, kinds) or any(_holds(getattr(s, part, ()), kinds) for part in ("body", "then", "orelse"))
               for s in statements)


def render(k, kernel):
    """Emit ``kernel``'s body into KernelBuilder ``k``."""
    Renderer(k, kernel).body(kernel.body)


class ValueRenderer(Renderer):
    """Renders expressions at a builder's position outside any kernel description (the
    templates: epilogues, recurrent gates): a ``Var`` stands for an LLVM value the caller
    computed (``values``, or bound later with ``bind``), a ``Load`` reads one of the caller's
    ``pointers`` ({buffer name: (typed pointer, dtype)}). With ``lanes`` the values are vectors
    of that many lanes, and so are the constants."""

    def __init__(self, b, values=(), pointers=(), lanes=0):
        self.k, self.b, self.lanes = None, b, lanes
        self.pointers = {name: p for name, (p, _) in dict(pointers).items()}
        self.dtypes = {name: dtype for name, (_, dtype) in dict(pointers).items()}
        self.written = set()
        self.indices = dict(values)
        self.locals = {}
        self.cache = {}
        self.e = ScalarEmitter(b)

    def constant(self, e):
        value = super().constant(e)
        return ir.Constant(ir.VectorType(value.type, self.lanes), [value.constant] * self.lanes) if self.lanes else value

    def bind(self, name, e):
        """Emit ``e`` now; later expressions read its value as ``Var(name)``."""
        self.indices[name] = self.expr(e)
        return Var(name, e.dtype)


_DTYPE_OF = {"float": "float32", "double": "float64", "i1": "bool", "i32": "int32", "i64": "int64"}


def scalar(b, op, args, **attrs):
    """Element-wise op ``op`` over the LLVM values ``args``, emitted at ``b``'s position from
    its neutral definition (or its NATIVE spelling). The values may be vectors (all of the same
    lane count): the op is then computed lane by lane."""
    lanes = max(a.type.count if isinstance(a.type, ir.VectorType) else 0 for a in args)
    names = [Var(f"a{i}", _DTYPE_OF[str(v.type.element if lanes else v.type)]) for i, v in enumerate(args)]
    return ValueRenderer(b, {n.name: v for n, v in zip(names, args)}, lanes=lanes).expr(call(op, *names, **attrs))
