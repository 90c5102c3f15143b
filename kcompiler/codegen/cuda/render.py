"""Renders a target-neutral kernel description (kcompiler/schedule/kernel.py) as CUDA C.

``render(kernel)`` gives a ``CudaKernel``: the source of one or more ``extern "C" __global__``
functions and the launches that run them, in order. ``module_source(kernels)`` puts the
prelude (prelude.h: plain CUDA under nvcc, host C++ for the CPU emulation) in front of the
kernels of one module.

Parameters: the description's buffers as typed pointers (outputs ``T* __restrict__``, inputs
``const T* __restrict__``, in the description's order) and last ``int* error``, the step's
error record (i32 status, i32 node id, i64 value; passes/memory_plan.py). ``Fail`` records
the first error through ``atomicCAS`` on the status (``kc_fail``), with the node id of the
description (``kernel.nodes[0]``, -1 if unknown).

Mapping onto threads:

- The outermost perfect nest of ``parallel`` loops at the top of a body becomes one
  grid-stride loop over its flattened iteration space: each thread takes flat indices
  ``blockIdx.x * blockDim.x + threadIdx.x``, then every ``gridDim.x * blockDim.x`` after it, up
  to the product of the extents (the *index guard*), and recovers the loop indices by div/mod
  (int64). Everything below that nest (serial loops, locals, ifs, inner parallel loops) runs
  inside the thread, as written. A body with no parallel nest at its top is one thread's work
  (a launch of extent 1).
- Top-level sibling statements (scatter_add's zero fill, then its atomic adds) cannot share a
  launch: the second needs the whole first done, and CUDA has no grid-wide barrier short of a
  cooperative launch. Each top-level statement is its own ``__global__`` function
  (``<name>_part<k>``), launched in order on one stream, which orders them. A body with a
  top-level ``Local`` stays one launch (the later statements read it); it is serial anyway.
- Launch configuration (``Launch``): ``THREADS_PER_BLOCK`` threads per block (fewer, rounded
  up to a warp, for a small extent), blocks to cover the extent, at most ``MAX_BLOCKS``: the
  grid-stride loop makes any grid size correct.
- Reductions (codegen/cuda/reduction.py finds them and checks that reordering them is safe)
  run on blocks of threads, in the barrier-split form of prelude.h (``Launch.barriers``):
  a row body folding at least ``BLOCK_MIN_EXTENT`` elements per row (sum/mean/max/min along
  the innermost axes, argmax/argmin, the softmax family) gets one block per row, its threads
  dealing out each pass over the row, a shared-memory tree per reduction pass and every
  thread reading the result (``rows``); an accumulation into an output row (a bias gradient)
  gets blocks of tx columns x ty reduced rows, a tree over the rows (``columns``); a parallel
  nest holding such an accumulation among other statements is split into one launch per
  statement first (``fission``). Partial sums start from the identity and are combined into
  the description's accumulator at the end; argmax pairs merge keeping the better value, a
  tie going to the lower index.

Expressions: every ``Call`` and ``Load`` is one ``const`` temporary (``t<N>``) in the order of
evaluation, so a subexpression shared by several others (Philox rounds, fused members) is
computed once; within a block a subexpression met again is reused, except those reading a
local or a buffer the kernel writes (``varies``), as in the LLVM renderer. Primitives are C
operators or CUDA math functions with float32 semantics (``expf``, ``tanhf``, ``rintf`` for
round-half-even, no fast-math); ``max``/``min`` of floats are ``kc_max``/``kc_min``, which
propagate NaN as numpy does (``fmaxf`` drops it); uint32 arithmetic wraps, ``umulhi`` is
``__umulhi``; ``AtomicAdd`` is ``atomicAdd``. Registry ops are expanded through their neutral
definitions (schedule/scalar.py): this backend spells none natively yet (``NATIVE``).

Each function also gets, under ``#ifndef __CUDACC__``, an ``extern "C"`` emulation entry
``<function>_emulate(blocks, threads, args)`` that runs its launch on the CPU (``kc_launch``,
or ``kc_launch_blocks`` for the barrier-split form; prelude.h) with ``args`` the parameter
pointers in order; nvcc never sees it.
"""
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UnsupportedError
from ...schedule.kernel import (INFIX, PRIMITIVES, Assign, Const, Load, Local, Loop, Store, Var, call, varies,
                                written_buffers)
from ...schedule.scalar import expand
from .reduction import (CANDIDATE, CURRENT, Accumulation, Combine, Pass, RowBody, accumulation, fission, identity,
                        row_body)

PRELUDE = Path(__file__).with_name("prelude.h")

THREADS_PER_BLOCK = 256
WARP = 32
MAX_BLOCKS = 1 << 16

C_TYPE = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool",
          "uint32": "unsigned int"}

# Ops this backend spells natively instead of through their neutral definition (none yet):
# op -> fn(argument strings) -> C expression.
NATIVE = {}

_MATH = {"exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "fabs", "floor": "floor", "ceil": "ceil", "round": "rint",
         "sin": "sin", "cos": "cos", "tanh": "tanh", "log1p": "log1p", "expm1": "expm1", "erf": "erf", "pow": "pow"}

_C_WORDS = frozenset("""auto bool break case char const continue default do double else enum extern float for goto
if inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while class delete new this template typename operator private public true false""".split())


@dataclass(frozen=True)
class Launch:
    """One launch of ``kernel`` (a __global__ function) on ``blocks`` x ``threads`` (x, y, z).
    ``extent``: the flat indices a grid-stride launch covers (0 for a template's launch).
    ``barriers``: written in the barrier-split form (prelude.h), emulated block by block."""
    kernel: str
    blocks: tuple
    threads: tuple
    extent: int = 0
    barriers: bool = False

    @classmethod
    def grid_stride(cls, kernel, extent):
        """A full block of threads, or the extent rounded up to whole warps; blocks to cover the
        extent, at most MAX_BLOCKS (the grid-stride loop makes any grid size correct)."""
        threads = min(THREADS_PER_BLOCK, max(WARP, -(-extent // WARP) * WARP))
        blocks = max(1, min(MAX_BLOCKS, -(-extent // threads)))
        return cls(kernel, (blocks, 1, 1), (threads, 1, 1), extent)

    @property
    def thread_count(self):
        """Threads launched in all."""
        return math.prod(self.blocks) * math.prod(self.threads)


@dataclass(frozen=True)
class CudaKernel:
    """A kernel rendered as CUDA C: ``source`` (its __global__ functions and their emulation
    entries) and ``launches`` (run in order, all with the parameters ``buffers``, then the error
    record)."""
    name: str
    source: str
    launches: tuple
    buffers: tuple


def render(kernel, name=None):
    """CudaKernel for description ``kernel`` (its functions named ``name``, by default the
    description's own name)."""
    name = name or kernel.name
    node = kernel.nodes[0] if kernel.nodes else -1
    parts = [piece for part in _parts(kernel.body) for piece in _fission(part)]
    sources, launches = [], []
    for k, part in enumerate(parts):
        function = name if len(parts) == 1 else f"{name}_part{k}"
        text, launch = _Function(kernel, node).render(function, part)
        sources.append(text)
        launches.append(launch)
    return CudaKernel(name, "\n".join(sources), tuple(launches), kernel.buffers)


# ---- contraction templates ------------------------------------------------------------------------

@dataclass
class TemplateContext:
    """What a CUDA template (a lowering registered with ``ir.registry.lowering("cuda", op)``)
    is handed. It returns a CudaKernel whose functions take ``parameters(buffers)`` and whose
    emulation entries are written by ``emulation_entry``."""
    name: str              # prefix of its function names (unique in the module)
    node: dict             # the IR node: op, attrs, type
    in_types: list
    out_types: list
    constants: dict        # operand index -> scalar known at compile time
    buffers: tuple         # schedule.kernel.node_buffers: out0.., in0..
    node_id: int = -1

    @property
    def attrs(self):
        return self.node["attrs"]


def parameters(buffers):
    """The parameter list of a kernel function over ``buffers``: outputs ``T* __restrict__``,
    inputs ``const T* __restrict__``, then ``int* __restrict__ error``."""
    params = [f"{C_TYPE[b.dtype]}* __restrict__ {b.name}" if b.output
              else f"const {C_TYPE[b.dtype]}* __restrict__ {b.name}" for b in buffers]
    return ", ".join(params + ["int* __restrict__ error"])


def emulation_entry(function, buffers, barriers=False):
    """The host-only entry ``<function>_emulate(blocks, threads, args)`` that runs one launch of
    ``function`` on the CPU (kc_launch, or kc_launch_blocks for the barrier-split form);
    ``args``: the parameter pointers in order."""
    casts = ", ".join([f"({C_TYPE[b.dtype]}*)args[{i}]" if b.output else f"(const {C_TYPE[b.dtype]}*)args[{i}]"
                       for i, b in enumerate(buffers)] + [f"(int*)args[{len(buffers)}]"])
    launch = (f"kc_launch_blocks({function}, blocks, threads, {casts});" if barriers
              else f"kc_launch({function}, blocks[0], threads[0], {casts});")
    return "\n".join(["#ifndef __CUDACC__",
                      f'extern "C" void {function}_emulate(const unsigned int* blocks, const unsigned int* threads, '
                      f"void** args) {{",
                      f"    {launch}", "}", "#endif", ""])


def render_node(node, in_types, constants, name, node_id=-1):
    """CudaKernel of one scheduled IR node: its description rendered, or its op's CUDA template."""
    if "kernel" in node:
        return render(node["kernel"], name=name)
    from ...ir.registry import get_op
    from ...schedule.kernel import node_buffers
    template = get_op(node["op"]).lowerings.get("cuda")
    if template is None:
        raise UnsupportedError(f"no CUDA kernel for op {node['op']} ({node.get('layer') or 'no layer'})")
    out_types = list(node["type"]) if isinstance(node["type"], tuple) else [node["type"]]
    return template(TemplateContext(name, node, list(in_types), out_types, dict(constants),
                                    node_buffers(node, in_types), node_id))


def device_function(function, parameters, statements, node=-1):
    """A ``__device__`` function ``function(parameters)`` (a C parameter list whose names the
    statements read as ``Var``s or buffers) running description ``statements`` in one thread:
    how a template applies a fused epilogue (cuda/epilogue.py) where its result is stored."""
    from ...schedule.kernel import Kernel
    f = _Function(Kernel(function, (), tuple(statements)), node)
    for name in re.findall(r"(\w+)\s*(?:,|$)", parameters):
        f.names[name] = name
    f.body(statements)
    return "\n".join([f"KC_DEVICE void {function}({parameters}) {{", *f.lines, "}", ""])


def module_source(kernels):
    """One translation unit: the prelude, then the kernels' sources."""
    return "\n".join([PRELUDE.read_text(), *(k.source for k in kernels)])


def _parts(body):
    """The body's launches: each top-level statement on its own, unless a top-level local ties
    them together (then the whole body is one)."""
    if len(body) > 1 and not any(isinstance(s, (Local, Assign)) for s in body):
        return [(s,) for s in body]
    return [tuple(body)]


def _parallel_nest(part):
    """(the perfect nest of parallel loops at the top of ``part``, the statements inside it)."""
    loops, body = [], part
    while len(body) == 1 and isinstance(body[0], Loop) and body[0].parallel:
        loops.append(body[0])
        body = body[0].body
    return loops, body


# ---- block reductions: when and how wide ------------------------------------------------------

# A reduction runs on a block of threads when it folds at least this many elements per output
# (fewer: one thread per output, the grid-stride loop, as any kernel).
BLOCK_MIN_EXTENT = WARP
MAX_GRID = 2 ** 31 - 1   # blocks in x

# Values the renderer introduces into expressions (not C identifiers: never a description's).
PARTIAL, RESULT = "@partial", "@result"


@dataclass(frozen=True)
class _RowPlan:
    """One block of ``threads`` threads per row (an iteration of the parallel nest)."""
    row: RowBody
    threads: int


@dataclass(frozen=True)
class _ColumnPlan:
    """Blocks of tx x ty threads over an Accumulation: x walks ``column`` (the column loop of
    smallest stride: coalesced), ``tiles`` blocks of tx columns each per iteration of the
    parallel loops and the ``others`` column loops; y walks the reduced loops."""
    accumulation: Accumulation
    column: Loop
    others: tuple
    tx: int
    ty: int
    tiles: int


def _pow2_at_least(n):
    return 1 << max(0, n - 1).bit_length()


def _fission(part):
    """``part``, or its parallel nest split around each statement (reduction.fission)."""
    loops, body = _parallel_nest(part)
    return fission(loops, body, BLOCK_MIN_EXTENT) or [part]


def _column_plan(loops, body):
    """A part that is one accumulation (inside the parallel ``loops``) as a _ColumnPlan: always
    (a thread per column at least; today's alternative is one thread per parallel
    iteration), as wide in y as the reduced extent allows."""
    acc = accumulation(body[0], loops) if len(body) == 1 else None
    if acc is None:
        return None
    if acc.columns:
        column = min(reversed(acc.columns), key=lambda l: abs(acc.strides[l.var.name]))
    else:
        column = Loop(Var("kc_column"), 1, ())
    others = tuple(l for l in acc.columns if l is not column)
    tx = min(WARP, _pow2_at_least(column.extent))
    ty = min(_pow2_at_least(acc.extent), THREADS_PER_BLOCK // tx)
    tiles = -(-column.extent // tx)
    if not 1 <= math.prod(l.extent for l in tuple(loops) + others) * tiles <= MAX_GRID:
        return None
    return _ColumnPlan(acc, column, others, tx, ty, tiles)


def _row_plan(loops, body, written):
    """A row body (inside the parallel ``loops``) as a _RowPlan when one of its reduction
    passes folds at least BLOCK_MIN_EXTENT elements: threads to cover its longest pass, up to
    a full block."""
    row = row_body(body, written)
    if row is None or not 1 <= math.prod(l.extent for l in loops) <= MAX_GRID \
            or not any(p.reductions and p.extent >= BLOCK_MIN_EXTENT for p in row.passes):
        return None
    return _RowPlan(row, min(THREADS_PER_BLOCK, _pow2_at_least(max(p.extent for p in row.passes))))


def _literal(value, dtype):
    if dtype == "bool":
        return "true" if value else "false"
    if dtype in ("float32", "float64"):
        v = float(np.float32(value)) if dtype == "float32" else float(value)
        if math.isnan(v):
            text = "NAN"
        elif math.isinf(v):
            text = "INFINITY" if v > 0 else "-INFINITY"
        else:
            return v.hex() + ("f" if dtype == "float32" else "")
        return text if dtype == "float32" else f"(double){text}"
    v = int(value)
    if dtype == "uint32":
        return f"{v & 0xFFFFFFFF:#x}u"
    if dtype == "int32":
        return str(v) if v > -2 ** 31 else "(-2147483647 - 1)"
    return f"{v}LL" if v > -2 ** 63 else "(-9223372036854775807LL - 1)"


def _is_float(dtype):
    return dtype.startswith("float")


class _Function:
    """Writes one __global__ function: a block reduction, or the grid-stride loop over a part's
    parallel nest and its statements inside."""

    def __init__(self, kernel, node):
        self.kernel, self.node = kernel, node
        self.dtypes = {b.name: b.dtype for b in kernel.buffers}
        self.written = written_buffers(kernel.body)
        self.names = {}          # description variable name -> C name
        self.locals = set()      # description names of the locals declared so far
        self.cache = {}          # Expr -> C name of its temporary, for the current block
        self.lines, self.depth, self.temps = [], 1, 0
        self.arrays = self.partials = 0   # shared arrays and partials of block reductions so far
        self.locals |= {CANDIDATE, CURRENT, PARTIAL, RESULT}  # the renderer's own values: never reused

    # ---- the function ---------------------------------------------------------------------------

    def render(self, function, part):
        """(the text of __global__ function ``function`` running ``part``, its Launch): a block
        reduction where the part is one (``_column_plan``, ``_row_plan``), else the grid-stride
        loop over its parallel nest."""
        loops, body = _parallel_nest(part)
        plan = _column_plan(loops, body) or _row_plan(loops, body, written_buffers(part))
        if isinstance(plan, _ColumnPlan):
            launch = self.columns(function, loops, plan)
        elif isinstance(plan, _RowPlan):
            launch = self.rows(function, loops, plan)
        else:
            launch = self.grid_stride(function, loops, body)
        text = "\n".join([f'extern "C" __global__ void {function}({parameters(self.kernel.buffers)}) {{', *self.lines,
                          "}", emulation_entry(function, self.kernel.buffers, launch.barriers)])
        return text, launch

    def grid_stride(self, function, loops, body):
        extent = math.prod(l.extent for l in loops)
        self.emit(f"for (long long thread_index = (long long)blockIdx.x * blockDim.x + threadIdx.x; "
                  f"thread_index < {extent}; thread_index += (long long)gridDim.x * blockDim.x) {{")
        self.depth += 1
        self.unflatten("thread_index", loops)
        self.body(body)
        self.depth -= 1
        self.emit("}")
        return Launch.grid_stride(function, extent)

    def unflatten(self, flat, loops):
        """Declare the variables of ``loops`` (outermost first) from C expression ``flat``, the
        flat index of an iteration of their nest (row-major)."""
        inner = 1
        for k in reversed(range(len(loops))):
            index = flat if inner == 1 else f"{flat} / {inner}"
            if k > 0:
                index = f"{index} % {loops[k].extent}"
            self.emit(f"const long long {self.declare(loops[k].var.name)} = {index};")
            inner *= loops[k].extent

    def emit(self, line):
        self.lines.append("    " * self.depth + line)

    def declare(self, name):
        """The C name of description variable ``name`` (renamed off C words and the renderer's
        own names)."""
        c_name = name
        if c_name in _C_WORDS or re.fullmatch(r"t\d+", c_name) or c_name in ("thread_index", "error") \
                or c_name.startswith("kc_") or c_name in self.dtypes:
            c_name += "_"
        self.names[name] = c_name
        return c_name

    def let(self, dtype, value):
        """A const temporary holding C expression ``value``; its name."""
        temp = f"t{self.temps}"
        self.temps += 1
        self.emit(f"const {C_TYPE[dtype]} {temp} = {value};")
        return temp

    # ---- block reductions (barrier-split form, prelude.h) ----------------------------------------

    def open_region(self):
        self.emit("KC_THREADS {")
        self.depth += 1
        self.region_cache = dict(self.cache)

    def close_region(self):
        self.cache = self.region_cache
        self.depth -= 1
        self.emit("}")

    def lanes(self, loops, lane, lanes, statements):
        """The iterations of the nest ``loops`` around ``statements`` dealt out over ``lanes``
        threads: lane ``lane`` takes flat iterations lane, lane + lanes, ... (neighbouring
        threads, neighbouring iterations: coalesced loads where the innermost loop is
        contiguous)."""
        extent = math.prod(l.extent for l in loops)
        self.emit(f"for (long long kc_f = {lane}; kc_f < {extent}; kc_f += {lanes}) {{")
        saved = dict(self.cache)
        self.depth += 1
        self.unflatten("kc_f", loops)
        self.body(statements)
        self.depth -= 1
        self.cache = saved
        self.emit("}")

    def merge(self, combine, a, b):
        """Emit the merge of partial results ``a`` and ``b`` (C names of their values, ``a``
        from the lower lane); the C names of the merged values."""
        if combine.op is not None:
            (dtype,) = combine.dtypes
            return [self.let(dtype, _primitive(call(combine.op, Var("a", dtype), Var("b", dtype)), [a[0], b[0]]))]
        # argmax/argmin: the better value wins, a tie goes to the first index (as in numpy)
        value_dtype, index_dtype = combine.dtypes
        def beats(x, y):
            self.names[CANDIDATE], self.names[CURRENT] = x, y
            return self.expr(combine.better)
        b_wins, a_wins = beats(b[0], a[0]), beats(a[0], b[0])
        take = self.let("bool", f"{b_wins} || (!{a_wins} && {b[1]} < {a[1]})")
        return [self.let(value_dtype, f"{take} ? {b[0]} : {a[0]}"),
                self.let(index_dtype, f"{take} ? {b[1]} : {a[1]}")]

    def tree(self, reductions, lane, lanes, at):
        """Halve the ``lanes`` partials of each reduction (combine, shared arrays) in shared
        memory until lanes 0 and 1 hold the last two: regions separated by barriers, each lane
        below the half ``s`` merging in the partial of its partner ``lane ^ s`` (= lane + s
        there; in bounds for every lane, so that a test removing the guard sees a race, not an
        access past the array). ``at(array, lane)``: the element of a lane. The caller merges
        lanes 0 and 1 after it (``tree_result``)."""
        if lanes < 4:
            return
        self.emit(f"for (int kc_s = {lanes // 2}; kc_s > 1; kc_s >>= 1) {{")
        self.depth += 1
        self.open_region()
        self.emit(f"if (KC_GUARD({lane} < kc_s)) {{")
        self.depth += 1
        for combine, arrays in reductions:
            a = [self.let(d, at(array, lane)) for d, array in zip(combine.dtypes, arrays)]
            b = [self.let(d, at(array, f"{lane} ^ kc_s")) for d, array in zip(combine.dtypes, arrays)]
            for array, value in zip(arrays, self.merge(combine, a, b)):
                self.emit(f"{at(array, lane)} = {value};")
        self.depth -= 1
        self.emit("}")
        self.close_region()
        self.emit("KC_SYNC;")
        self.depth -= 1
        self.emit("}")

    def tree_result(self, combine, arrays, at):
        """(In a region after ``tree``) the merged partials of lanes 0 and 1: the reduction's
        result."""
        a = [self.let(d, at(array, "0")) for d, array in zip(combine.dtypes, arrays)]
        b = [self.let(d, at(array, "1")) for d, array in zip(combine.dtypes, arrays)]
        return self.merge(combine, a, b)

    def shared_arrays(self, combine, dims):
        """Declare one shared array per value of a reduction's partials; their names."""
        arrays = []
        for dtype in combine.dtypes:
            arrays.append(f"kc_part{self.arrays}")
            self.arrays += 1
            self.emit(f"KC_SHARED({C_TYPE[dtype]}, {arrays[-1]}, {dims});")
        return arrays

    def rows(self, function, loops, plan):
        """One block per row (an iteration of the parallel nest ``loops``): its threads deal out
        the iterations of each pass over the row (``lanes``); a reduction pass leaves each
        thread's partial in shared memory, a tree combines them and every thread reads the
        result. A thread handles the same positions in every pass over one nest, so what a
        pass stores, a later pass reads in the same thread: passes need no barrier between
        them, only the reductions do. The row's locals live across barriers: one per thread
        (KC_PER_THREAD), the same value in each."""
        lanes, lane = plan.threads, "threadIdx.x"
        at = lambda array, k: f"{array}[{k}]"  # noqa: E731
        arrays = {id(r): self.shared_arrays(r.combine, f"[{lanes}]") for p in plan.row.passes for r in p.reductions}
        for var in plan.row.locals:
            self.emit(f"KC_PER_THREAD({C_TYPE[var.dtype]}, {self.declare(var.name)}, );")
            self.names[var.name] = f"KC_MINE({self.names[var.name]})"
            self.locals.add(var.name)
        if loops:
            self.emit("const long long kc_row = blockIdx.x;")
            self.unflatten("kc_row", loops)
        self.open_region()
        for item in plan.row.items:
            if isinstance(item, Local):
                self.emit(f"{self.names[item.var.name]} = {self.expr(item.init)};")
            elif isinstance(item, Store):  # one thread stores the row's result (every thread holds it)
                self.block("if (threadIdx.x == 0)", [item])
            elif not isinstance(item, Pass):
                self.body([item])
            elif not item.reductions:
                self.lanes(item.loops, lane, lanes, item.body)
            else:
                self.reduction_pass(item, [arrays[id(r)] for r in item.reductions], lane, lanes, at)
        self.close_region()
        return Launch(function, (math.prod(l.extent for l in loops), 1, 1), (lanes, 1, 1), barriers=True)

    def reduction_pass(self, p, arrays, lane, lanes, at):
        """Each thread reduces its share of the pass into private partials (starting from the
        identity of add/max/min, or from the current argmax pair, which merging again is
        harmless), the tree combines them, and every thread combines the result into the
        row's locals."""
        saved = {}
        for r in p.reductions:
            for var in r.vars:
                partial = f"kc_p{self.partials}"
                self.partials += 1
                start = self.names[var.name] if r.combine.op is None else _literal(identity(r.combine.op, var.dtype),
                                                                                    var.dtype)
                self.emit(f"{C_TYPE[var.dtype]} {partial} = {start};")
                saved[var.name] = self.names[var.name]
                self.names[var.name] = partial
        self.lanes(p.loops, lane, lanes, p.body)
        for r, r_arrays in zip(p.reductions, arrays):
            for var, array in zip(r.vars, r_arrays):
                self.emit(f"{at(array, lane)} = {self.names[var.name]};")
        self.names.update(saved)
        self.close_region()
        self.emit("KC_SYNC;")
        self.tree([(r.combine, a) for r, a in zip(p.reductions, arrays)], lane, lanes, at)
        self.open_region()
        for r, r_arrays in zip(p.reductions, arrays):
            result = self.tree_result(r.combine, r_arrays, at)
            if r.combine.op is None:
                for var, value in zip(r.vars, result):
                    self.emit(f"{self.names[var.name]} = {value};")
            else:
                (var,), (value,) = r.vars, result
                mine = self.names[var.name]
                combined = _primitive(call(r.combine.op, Var("a", var.dtype), Var("b", var.dtype)), [mine, value])
                self.emit(f"{mine} = {combined};")

    def columns(self, function, loops, plan):
        """A read-modify-write nest ``b[I] = op(b[I], value)`` (``_column_plan``): a block of
        tx x ty threads per ``tx`` neighbouring columns (and per iteration of the parallel
        loops and the other column loops); thread (x, y) reduces column x over reduced
        iterations y, y + ty, ...; a tree over y combines the partials in shared memory and
        thread (x, 0) merges the result into b[I]."""
        acc, tx, ty = plan.accumulation, plan.tx, plan.ty
        dtype = acc.value.dtype
        combine = Combine((dtype,), acc.op)
        arrays = self.shared_arrays(combine, f"[{ty}][{tx}]") if ty > 1 else []
        at = lambda array, k: f"{array}[{k}][threadIdx.x]"  # noqa: E731
        block_loops = tuple(loops) + plan.others
        if plan.tiles > 1:
            self.emit(f"const long long kc_tile = blockIdx.x % {plan.tiles};")
        self.unflatten(f"((long long)blockIdx.x / {plan.tiles})" if plan.tiles > 1 else "(long long)blockIdx.x",
                       block_loops)
        column = plan.column
        first_column = f"kc_tile * {tx} + threadIdx.x" if plan.tiles > 1 else "threadIdx.x"
        partial, result = Var(PARTIAL, dtype), Var(RESULT, dtype)
        store = Store(acc.store.buffer, acc.store.index,
                      call(acc.op, Load(acc.store.buffer, acc.store.index, dtype), result))

        self.open_region()
        self.emit(f"const long long {self.declare(column.var.name)} = {first_column};")
        # the index guard, where the tiles hold threads past the last column
        guard = (f"if (KC_GUARD({self.names[column.var.name]} < {column.extent}))"
                 if plan.tiles * tx > column.extent else "")
        self.names[PARTIAL] = "kc_p0"
        self.emit(f"{C_TYPE[dtype]} kc_p0 = {_literal(identity(acc.op, dtype), dtype)};")
        self.emit((guard + " {").strip())
        self.depth += 1
        self.lanes(acc.reduced, "threadIdx.y", ty, [Assign(partial, call(acc.op, partial, acc.value))])
        if ty == 1:
            self.names[RESULT] = "kc_p0"
            self.stmt_Store(store)
        self.depth -= 1
        self.emit("}")
        if ty > 1:
            self.emit(f"{at(arrays[0], 'threadIdx.y')} = kc_p0;")
        self.close_region()
        if ty > 1:
            self.emit("KC_SYNC;")
            self.tree([(combine, arrays)], "threadIdx.y", ty, at)
            self.open_region()
            self.emit("if (threadIdx.y == 0) {")
            self.depth += 1
            self.emit(f"const long long {self.names[column.var.name]} = {first_column};")
            (self.names[RESULT],) = self.tree_result(combine, arrays, at)
            if guard:
                self.block(guard, [store])
            else:
                self.stmt_Store(store)
            self.depth -= 1
            self.emit("}")
            self.close_region()
        blocks = math.prod(l.extent for l in block_loops) * plan.tiles
        return Launch(function, (blocks, 1, 1), (tx, ty, 1), barriers=True)

    # ---- statements ---------------------------------------------------------------------------

    def body(self, statements):
        for s in statements:
            getattr(self, "stmt_" + type(s).__name__)(s)

    def block(self, head, statements):
        """``head {`` statements ``}``, the temporaries of the block forgotten after it."""
        self.emit(head + " {")
        saved = dict(self.cache)
        self.depth += 1
        self.body(statements)
        self.depth -= 1
        self.cache = saved
        self.emit("}")

    def stmt_Loop(self, s):
        var = self.declare(s.var.name)
        self.block(f"for (long long {var} = 0; {var} < {s.extent}; ++{var})", s.body)

    def stmt_Store(self, s):
        index, value = self.expr(s.index), self.expr(s.value)
        self.emit(f"{s.buffer}[{index}] = {value};")

    def stmt_AtomicAdd(self, s):
        index, value = self.expr(s.index), self.expr(s.value)
        dtype = self.dtypes[s.buffer]
        if dtype == "int64":  # CUDA adds 64-bit integers as unsigned: the same bits
            self.emit(f"atomicAdd((unsigned long long*)&{s.buffer}[{index}], (unsigned long long){value});")
        elif dtype in ("float32", "float64", "int32"):
            self.emit(f"atomicAdd(&{s.buffer}[{index}], {value});")
        else:
            raise UnsupportedError(f"no atomic add of {dtype} elements on CUDA")

    def stmt_Local(self, s):
        init = self.expr(s.init)
        self.emit(f"{C_TYPE[s.var.dtype]} {self.declare(s.var.name)} = {init};")
        self.locals.add(s.var.name)

    def stmt_Assign(self, s):
        value = self.expr(s.value)
        self.emit(f"{self.names[s.var.name]} = {value};")

    def stmt_If(self, s):
        self.block(f"if ({self.expr(s.cond)})", s.then)
        if s.orelse:
            self.block("else", s.orelse)

    def stmt_Fail(self, s):
        self.emit(f"kc_fail(error, {s.code}, {self.node}, (long long){self.expr(s.value)});")

    # ---- expressions --------------------------------------------------------------------------

    def expr(self, e):
        """A C name or literal holding the value of ``e``."""
        if isinstance(e, Const):
            return _literal(e.value, e.dtype)
        if isinstance(e, Var):
            return self.names[e.name]
        hit = self.cache.get(e)
        if hit is not None:
            return hit
        if isinstance(e, Load):
            value = f"{e.buffer}[{self.expr(e.index)}]"
        elif e.op in NATIVE:
            value = NATIVE[e.op]([self.expr(a) for a in e.args])
        elif e.op in PRIMITIVES:
            value = _primitive(e, [self.expr(a) for a in e.args])
        else:
            return self.expr(expand(e))
        temp = f"t{self.temps}"
        self.temps += 1
        self.emit(f"const {C_TYPE[e.dtype]} {temp} = {value};")
        if not varies(e, self.locals, self.written):  # reusable: reads nothing a statement changes
            self.cache[e] = temp
        return temp


def _primitive(e, args):
    """The C expression of primitive Call ``e`` over its rendered arguments."""
    op, dtype = e.op, e.args[0].dtype
    if op in _MATH:
        if not _is_float(dtype):
            if op == "abs":
                return f"({args[0]} < 0 ? -({args[0]}) : {args[0]})"
            raise UnsupportedError(f"{op} of {dtype} has no CUDA spelling")
        return f"{_MATH[op]}{'f' if dtype == 'float32' else ''}({', '.join(args)})"
    if op in ("max", "min"):
        x, y = args
        if _is_float(dtype):
            return f"kc_{op}({x}, {y})"
        return f"({x} {'>=' if op == 'max' else '<='} {y} ? {x} : {y})"
    if op == "umulhi":
        return f"__umulhi({args[0]}, {args[1]})"
    if op == "select":
        return f"({args[0]} ? {args[1]} : {args[2]})"
    if op == "cast":
        return f"({C_TYPE[e.dtype]}){args[0]}"
    if op == "isnan":
        return f"isnan({args[0]})"
    if op == "neg":
        return f"-({args[0]})"
    if op == "not":
        return f"!({args[0]})" if dtype == "bool" else f"~({args[0]})"
    if dtype == "bool" and op in ("and", "or", "xor"):
        return f"({args[0]} {dict(zip(('and', 'or', 'xor'), ('&&', '||', '!=')))[op]} {args[1]})"
    if op in ("and", "or"):
        return f"({args[0]} {'&' if op == 'and' else '|'} {args[1]})"
    return f"({args[0]} {INFIX[op]} {args[1]})"  # arithmetic, comparisons, xor, shifts
