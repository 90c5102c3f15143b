"""The target-neutral kernel description: what one kernel computes, as loop nests over index
ranges with loads, stores, scalar locals and scalar expressions. Backends render it (LLVM IR,
CUDA C); nothing here knows a target.

A kernel reads and writes named buffers (flat arrays of one dtype: ``out0``, ``in1``, ...);
its body is a tuple of statements:

    Loop(var, extent, body, parallel)   for var in [0, extent): body   (parallel: iterations are
                                        independent, a backend may split them over cores/threads)
    Store(buffer, index, value)         buffer[index] = value
    AtomicAdd(buffer, index, value)     buffer[index] += value, atomically: iterations of an enclosing
                                        parallel loop may add to the same element (scatter-add); a
                                        backend running them concurrently needs an atomic add
    Local(var, dtype, init)             a scalar local (an accumulator), visible to later statements
    Assign(var, value, reorder)         local = value; with ``reorder`` value is op(local, x) (op: add,
                                        max, min) and the enclosing loop may combine its x in any order
                                        (a reduction a backend may vectorise; ``reduction()`` builds it)
    If(cond, then, orelse)
    Fail(code, value)                   report error ``code`` (``STATUS_*``) with an i64 ``value``
                                        (first error wins); only ops registered with ``index_error``
                                        emit it

Expressions are immutable trees:

    Const(value, dtype) · Var(name, dtype) · Load(buffer, index, dtype) · Call(op, args, attrs, dtype)

``Call.op`` is either an index/scalar primitive (``PRIMITIVES``) or an element-wise op of the
registry (``relu``, ``sigmoid_grad``, ...), whose value every backend gets from the one neutral
definition in ``schedule/scalar.py`` unless it spells the op natively. Index arithmetic is on
int64 values. Everything is static: extents are Python ints.
"""
from dataclasses import dataclass, field

# Primitive calls every backend renders itself. Arithmetic is typed by the operands (integer
# ``div``/``mod`` truncate, as in C; index arithmetic is on non-negative values); comparisons
# return bool (float comparisons are false for NaN except ``ne``); ``select(c, a, b)``; ``cast``
# converts to the call's dtype; ``max``/``min`` propagate NaN (numpy's maximum/minimum);
# ``uint32`` values (Philox) wrap, ``shr`` is logical on them and ``umulhi`` is the high word.
PRIMITIVES = frozenset({
    "add", "sub", "mul", "div", "mod", "neg", "max", "min",
    "lt", "le", "gt", "ge", "eq", "ne", "isnan", "and", "or", "not", "xor", "shl", "shr", "umulhi",
    "select", "cast",
    "exp", "log", "sqrt", "abs", "floor", "ceil", "round", "sin", "cos", "tanh", "log1p", "expm1", "erf", "pow",
})

INDEX = "int64"

# Status codes a kernel reports through ``Fail`` (the runtime turns them into exceptions).
STATUS_OK = 0
STATUS_INDEX_OUT_OF_RANGE = 1
STATUS_OUT_OF_BOUNDS = 2         # bounds-checked builds: an access outside a buffer (skipped)


# ---- expressions --------------------------------------------------------------------------------

class Expr:
    __slots__ = ()

    # index arithmetic reads naturally: i * 64 + j
    def __add__(self, other): return call("add", self, other)
    def __radd__(self, other): return call("add", other, self)
    def __mul__(self, other): return call("mul", self, other)
    def __rmul__(self, other): return call("mul", other, self)
    def __sub__(self, other): return call("sub", self, other)
    def __floordiv__(self, other): return call("div", self, other)
    def __mod__(self, other): return call("mod", self, other)


@dataclass(frozen=True, eq=True)
class Const(Expr):
    value: object
    dtype: str


@dataclass(frozen=True, eq=True)
class Var(Expr):
    name: str
    dtype: str = INDEX


@dataclass(frozen=True, eq=True)
class Load(Expr):
    buffer: str
    index: Expr
    dtype: str


@dataclass(frozen=True, eq=True)
class Call(Expr):
    op: str
    args: tuple
    attrs: tuple = ()   # sorted (name, value) pairs: hashable, printable
    dtype: str = "float32"

    @property
    def attr_dict(self):
        return dict(self.attrs)


def const(value, dtype=INDEX):
    return value if isinstance(value, Expr) else Const(value, dtype)


def _as_expr(x, like=None):
    if isinstance(x, Expr):
        return x
    return Const(x, like.dtype if like is not None else (INDEX if isinstance(x, int) else "float32"))


BOOL_RESULT = frozenset({"lt", "le", "gt", "ge", "eq", "ne", "isnan", "not"})


def call(op, *args, dtype=None, **attrs):
    """A Call whose dtype follows its operands (bool for comparisons) unless given."""
    first = next((a for a in args if isinstance(a, Expr)), None)
    args = tuple(_as_expr(a, first) for a in args)
    if dtype is None:
        dtype = "bool" if op in BOOL_RESULT else (args[1].dtype if op == "select" else args[0].dtype)
    return Call(op, args, tuple(sorted(attrs.items())), dtype)


# ---- statements ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loop:
    var: Var
    extent: int
    body: tuple
    parallel: bool = False


@dataclass(frozen=True)
class Store:
    buffer: str
    index: Expr
    value: Expr


@dataclass(frozen=True)
class AtomicAdd:
    buffer: str
    index: Expr
    value: Expr


@dataclass(frozen=True)
class Local:
    var: Var
    init: Expr


@dataclass(frozen=True)
class Assign:
    var: Var
    value: Expr
    reorder: bool = False   # value is op(var, x) and the loops around may combine the x in any order


@dataclass(frozen=True)
class If:
    cond: Expr
    then: tuple
    orelse: tuple = ()


@dataclass(frozen=True)
class Fail:
    code: int
    value: Expr


@dataclass(frozen=True)
class Buffer:
    name: str
    dtype: str
    size: int          # elements
    output: bool


@dataclass
class Kernel:
    """One kernel: its buffers (outputs first, then inputs, as the entry point passes them),
    its body and the IR nodes it covers."""
    name: str
    buffers: tuple
    body: tuple
    nodes: list = field(default_factory=list)

    def buffer(self, name):
        return next(b for b in self.buffers if b.name == name)

    def __str__(self):
        return format_kernel(self)


def loop(var_name, extent, body, parallel=False):
    return Loop(Var(var_name), int(extent), tuple(body), parallel)


def accumulate(var, op, value):
    """``var = op(var, value)`` as a step of a reduction whose order does not matter."""
    return Assign(var, call(op, var, value), reorder=True)


def reduction(var_name, extent, accumulators):
    """Statements declaring each of ``accumulators``, (local ``Var``, combining op ``add``/
    ``max``/``min``, identity ``Const``, ``value(position)``), and combining into it the values
    of positions ``0..extent-1`` in a loop over ``var_name``, in any order (``Assign.reorder``):
    a backend may keep several partial results (a vector of them), where a left-to-right
    combination is one chain of dependent adds, a few cycles per element whatever the
    vector width. Sums then differ from the left-to-right sum by rounding; max and min do not."""
    position = Var(var_name)
    return [Local(v, init) for v, _, init, _ in accumulators] + [
        loop(var_name, extent, [accumulate(v, op, value(position)) for v, op, _, value in accumulators])]


# ---- index helpers --------------------------------------------------------------------------------

def contiguous_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return list(reversed(strides))


def broadcast_strides(shape, out_shape):
    """Element strides of an operand of ``shape`` read at ``out_shape`` indices (0 on broadcast axes)."""
    own = contiguous_strides(shape)
    lead = len(out_shape) - len(shape)
    return [0] * lead + [0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out_shape[lead:], own)]


def linear_index(indices, strides, offset=0):
    """offset + sum(indices[k] * strides[k]) (static strides; zero strides skipped, unit strides
    not multiplied)."""
    total = Const(offset, INDEX) if offset else None
    for i, s in zip(indices, strides):
        if s == 0:
            continue
        term = i if s == 1 else i * s
        total = term if total is None else total + term
    return total if total is not None else Const(0, INDEX)


def collapse_loops(dims, *stride_lists):
    """Drop size-1 axes and merge neighbours that every stride list walks contiguously
    (``s[k-1] == s[k] * dims[k]``): fewer, longer loops over the same elements, the innermost
    one long and contiguous (what a backend vectorises). Returns (dims, [strides, ...])."""
    kept = [k for k, d in enumerate(dims) if d != 1]
    dims = [dims[k] for k in kept]
    strides = [[s[k] for k in kept] for s in stride_lists]
    k = len(dims) - 1
    while k > 0:
        if all(s[k - 1] == s[k] * dims[k] for s in strides):
            dims[k - 1] *= dims[k]
            for s in strides:
                s[k - 1] = s[k]
            del dims[k]
            for s in strides:
                del s[k]
        k -= 1
    return dims, strides


def node_buffers(node, in_types):
    """A node's kernel buffers: out0.. for its results, then in0.. for its operands."""
    from ..ir.types import num_elements
    outs = node["type"] if isinstance(node["type"], tuple) else (node["type"],)
    return tuple([Buffer(f"out{i}", t.dtype, num_elements(t.shape), True) for i, t in enumerate(outs)]
                 + [Buffer(f"in{i}", t.dtype, num_elements(t.shape), False) for i, t in enumerate(in_types)])


# ---- what renderers ask of a body ---------------------------------------------------------------

def written_buffers(statements):
    """The names of the buffers ``statements`` store or add to."""
    out = set()
    for s in statements:
        if isinstance(s, (Store, AtomicAdd)):
            out.add(s.buffer)
        for part in ("body", "then", "orelse"):
            out |= written_buffers(getattr(s, part, ()))
    return out


def varies(e, local_names, written):
    """Whether expression ``e`` reads a local or a buffer the kernel writes: its value may differ
    between two points of one block, so a renderer never reuses it."""
    if isinstance(e, Var):
        return e.name in local_names
    if isinstance(e, Load):
        return e.buffer in written or varies(e.index, local_names, written)
    if isinstance(e, Call):
        return any(varies(a, local_names, written) for a in e.args)
    return False


# ---- printing -------------------------------------------------------------------------------------

INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "lt": "<", "le": "<=",
         "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "and": "&&", "or": "||", "xor": "^", "shl": "<<",
         "shr": ">>"}


def format_expr(e):
    if isinstance(e, Const):
        return repr(e.value) if e.dtype != "bool" else ("true" if e.value else "false")
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Load):
        return f"{e.buffer}[{format_expr(e.index)}]"
    if e.op in INFIX and len(e.args) == 2:
        return f"({format_expr(e.args[0])} {INFIX[e.op]} {format_expr(e.args[1])})"
    args = ", ".join(format_expr(a) for a in e.args)
    attrs = "".join(f", {k}={v!r}" for k, v in e.attrs)
    cast = f"<{e.dtype}>" if e.op in ("cast", "bitcast") else ""
    return f"{e.op}{cast}({args}{attrs})"


def format_body(body, indent="  "):
    lines = []
    for s in body:
        if isinstance(s, Loop):
            lines.append(f"{indent}for {s.var.name} in 0..{s.extent}{' parallel' if s.parallel else ''}:")
            lines += format_body(s.body, indent + "  ")
        elif isinstance(s, Store):
            lines.append(f"{indent}{s.buffer}[{format_expr(s.index)}] = {format_expr(s.value)}")
        elif isinstance(s, AtomicAdd):
            lines.append(f"{indent}atomic {s.buffer}[{format_expr(s.index)}] += {format_expr(s.value)}")
        elif isinstance(s, Local):
            lines.append(f"{indent}{s.var.dtype} {s.var.name} = {format_expr(s.init)}")
        elif isinstance(s, Assign):
            lines.append(f"{indent}{s.var.name} = {format_expr(s.value)}{'  (any order)' if s.reorder else ''}")
        elif isinstance(s, If):
            lines.append(f"{indent}if {format_expr(s.cond)}:")
            lines += format_body(s.then, indent + "  ")
            if s.orelse:
                lines.append(f"{indent}else:")
                lines += format_body(s.orelse, indent + "  ")
        elif isinstance(s, Fail):
            lines.append(f"{indent}fail {s.code} with {format_expr(s.value)}")
        else:
            raise TypeError(f"not a kernel statement: {s!r}")
    return lines


def format_kernel(k):
    params = ", ".join(f"{'out' if b.output else 'in'} {b.dtype} {b.name}[{b.size}]" for b in k.buffers)
    return "\n".join([f"kernel {k.name}({params}):"] + format_body(k.body))
