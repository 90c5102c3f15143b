"""LLVM code generation for a planned graph: one kernel per node, one entry point per step.

``generate(g)`` emits every kernel as its own compilation unit (an LLVM module holding the
kernel, with external linkage, and its internal helpers) plus an entry unit
``i32 kc_entry(i8** params, i8* arena)``, which declares the kernels, calls them in plan order
with pointers into the parameter table and the arena, then commits the state updates (copies
them into their variables); it returns 0, or the status of the first error.

A kernel unit's symbol is derived from a hash of its own IR, so two identical kernels (of one
model, a deep network repeats shapes, or of two models) are literally the same unit: it is
compiled, cached (target.compile_units) and loaded once, and a model that changes one layer
recompiles only the units that changed.

A failed step commits nothing. Kernels write arena buffers, except the fused update kernels
the memory plan lets compute a state update in its variable's buffer (memory_plan.py
``_in_place_updates``: only after the last kernel that can fail); every other update is
copied into its variable by the commit, which runs only when the status is still 0. Right after each kernel that may fail
(ops registered with ``index_error``; in bounds-checked builds, every kernel) the entry
point tests the status and, when set, stores the node id in the error record
(memory_plan.ERROR_RECORD_BYTES) and returns: the runtime then knows which node failed on
which value. On the normal path that costs one compare per fallible kernel.

A data-parallel step (a plan with a "collective" record, passes/memory_plan.py) has two
entry points with kc_entry's signature: ``kc_entry`` runs the kernels before the all-reduce
(forward and backward) and commits nothing; ``kc_entry_update`` runs the rest (the
optimizer's update) and commits. The runtime reduces the gradient region between the two.
"""
import hashlib
from dataclasses import dataclass, field

import llvmlite.ir as ir

from ...errors import UnsupportedError
from ...ir.graph import operands
from ...ir.registry import get_op
from ...ir.graph import inline_constants
from . import matmul  # noqa: F401  (registers the matmul template)
from . import conv, epilogue, rnn, rnn_backward, threads  # noqa: F401
from .irutil import bounds_checking, c64, generation_options, i8p, i32, i64, void
from .jit import LazyUnit, cache_key, host_target_info
from .kernel_builder import KernelBuilder, types_of
from .render import render
from .support_library import start_support_library
from .unit_memo import UnitMemo, signature

COMPILED_DTYPES = ("float32", "int32", "int64", "bool")

# The kernel's name while its unit is built: replaced by the hash-derived symbol, so that the
# name does not take part in the hash (identical kernels of different nodes hash alike).
_PLACEHOLDER = "kc_kernel_unit_placeholder"


@dataclass
class StepSource:
    """What ``generate`` hands the compiler: the IR of each distinct kernel unit by symbol (in
    first-use order) and of the entry unit."""
    units: dict            # symbol -> LLVM IR text of the kernel's unit, or a jit.LazyUnit
    entry: str             # LLVM IR text of the entry unit (kc_entry, declaring the kernels)

    def __str__(self):
        return "\n".join([*map(str, self.units.values()), self.entry])


@dataclass
class Kernel:
    name: str
    unit: object           # the kernel's LLVM IR text, or a jit.LazyUnit that generates it
    nodes: list            # the IR node ids it covers
    op: str = ""
    fused: list = field(default_factory=list)

    @property
    def source(self):
        """The kernel's LLVM IR (generated now if a warm start skipped it)."""
        return str(self.unit)


def _operand_keys(g, nid):
    keys = []
    for u in operands(g, nid):
        t = g.nodes[u]["type"]
        if isinstance(t, tuple):
            raise UnsupportedError(f"node %{nid} takes a multi-output node %{u} directly")
        keys.append((u, 0))
    return keys


def _check_supported(g):
    problems = []
    for nid in g.nodes:
        node = g.nodes[nid]
        for t in types_of(node["type"]):
            if t.dtype not in COMPILED_DTYPES:
                problems.append(f"%{nid} {node['op']} ({node.get('layer') or 'no layer'}): dtype {t.dtype}")
        if node["op"] in ("input", "variable", "constant", "fill", "reshape", "tuple_item", "all_reduce"):
            continue
        if "kernel" not in node and "llvm" not in get_op(node["op"]).lowerings:
            problems.append(f"%{nid} {node['op']} ({node.get('layer') or 'no layer'}): no LLVM lowering")
    if problems:
        raise UnsupportedError("cannot generate CPU code for:\n  " + "\n  ".join(problems))


def generate(g, module_name="kcompiler", profile=False):
    """Return (StepSource, [Kernel]) for planned graph ``g``. With ``profile``, the entry
    point also adds each kernel's cycle count (llvm.readcyclecounter) to the global
    array ``kc_profile_cycles``."""
    _check_supported(g)
    # Kernels call the support library (SGEMM, the thread runner) by name: it must be loaded
    # before they are, even when no kernel's IR is generated (every unit remembered,
    # unit_memo.py). Its build starts here and overlaps the kernels' (backend.compile waits).
    start_support_library()
    plan = g.graph["plan"]
    units, calls, kernels_out = {}, [], []
    memo = UnitMemo.open()
    try:
        for nid in plan["order"]:
            node = g.nodes[nid]
            in_types = [g.nodes[u]["type"] for u in operands(g, nid)]
            symbol, unit = _remembered_unit(memo, node, in_types, inline_constants(g, nid))
            units.setdefault(symbol, unit)
            calls.append((nid, symbol, _kernel_type(node, in_types)))
            kernels_out.append(Kernel(name=f"k{nid}_{node['op']}", unit=unit, nodes=[nid], op=node["op"],
                                      fused=list(node.get("fused", []))))
    finally:
        memo.close()
    entry = ir.Module(name=module_name)
    entry.triple = ""
    _emit_entry(entry, g, calls, profile)
    return StepSource(units=units, entry=str(entry)), kernels_out


def _kernel_type(node, in_types):
    """Every kernel's signature (kernel_builder.py): i8* per output and operand, i32* status."""
    return ir.FunctionType(void, [i8p] * (len(types_of(node["type"])) + len(in_types)) + [i32.as_pointer()])


def _remembered_unit(memo, node, in_types, constants):
    """(symbol, unit) of ``node``'s kernel: a jit.LazyUnit when the memo knows its symbol and
    cache key (unit_memo.py), else its IR text, generated now and remembered."""
    options = generation_options()
    # the IR depends on the threads kernels split work into (conv.parts_for): a process
    # restricted to one CPU must not reuse the units of one that has two, nor the reverse
    sig = signature(node, in_types, constants, options, (*host_target_info(), f"threads={threads.default_nthreads()}"))
    known = memo.get(sig)
    if known is not None:
        symbol, key = known
        return symbol, LazyUnit(key, lambda: _kernel_unit(node, in_types, constants)[1])
    symbol, text, _ = _kernel_unit(node, in_types, constants)
    memo.put(sig, symbol, cache_key(text, options.opt_level))
    return symbol, text


def _kernel_unit(node, in_types, constants):
    """(symbol, IR text, function type) of the unit that holds ``node``'s kernel alone."""
    module = ir.Module(name="kc_kernel")
    module.triple = ""
    k = KernelBuilder(module, _PLACEHOLDER, node, in_types, constants)
    if "kernel" in node:  # a target-neutral description (the scheduled stage)
        render(k, node["kernel"])
    else:
        get_op(node["op"]).lowerings["llvm"](k)
    fn = k.finish()
    fn.linkage = ""  # external: the entry unit calls it by name
    text = str(module)
    symbol = "kc_" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return symbol, text.replace(_PLACEHOLDER, symbol), fn.ftype


def _emit_entry(module, g, calls, profile=False):
    """kc_entry into ``module``; ``calls``: (node id, kernel symbol, kernel function type) in plan
    order. A plan split at an all-reduce gets kc_entry (up to it) and kc_entry_update (after it)."""
    counters = None
    if profile:
        counters = ir.GlobalVariable(module, ir.ArrayType(i64, max(len(calls), 1)), name="kc_profile_cycles")
        counters.initializer = ir.Constant(counters.type.pointee, None)
    collective = g.graph["plan"].get("collective")
    if collective is None:
        _emit_entry_function(module, "kc_entry", g, list(enumerate(calls)), counters, commit=True)
        return
    split = collective["split"]
    _emit_entry_function(module, "kc_entry", g, list(enumerate(calls))[:split], counters, commit=False)
    _emit_entry_function(module, "kc_entry_update", g, list(enumerate(calls))[split:], counters, commit=True)


def _emit_entry_function(module, name, g, calls, counters, commit):
    """One entry function running ``calls`` ((index, (node id, symbol, function type))) and, with
    ``commit``, copying the state updates into their variables once every kernel succeeded."""
    plan = g.graph["plan"]
    fn = ir.Function(module, ir.FunctionType(i32, [i8p.as_pointer(), i8p]), name=name)
    params, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    status = b.bitcast(b.gep(arena, [c64(plan["error_record"])], inbounds=True), i32.as_pointer(), name="status")
    failed_node = b.gep(status, [ir.Constant(i32, 1)], inbounds=True)
    b.store(ir.Constant(i32, 0), status)
    cache = {}

    def pointer(key):
        key = plan["root"].get(key, key)
        if key in cache:
            return cache[key]
        where = plan["buffers"][key]
        if where[0] == "param":
            p = b.load(b.gep(params, [ir.Constant(i32, where[1])], inbounds=True))
        else:
            p = b.gep(arena, [c64(where[1])], inbounds=True)
        cache[key] = p
        return p

    check_every = bounds_checking()  # any kernel may then report an access outside a buffer
    clock = None
    if counters is not None:
        clock = module.globals.get("llvm.readcyclecounter") or ir.Function(
            module, ir.FunctionType(i64, []), name="llvm.readcyclecounter")
    for index, (nid, symbol, fnty) in calls:
        kfn = module.globals.get(symbol) or ir.Function(module, fnty, name=symbol)  # declared, defined in its unit
        outs = [pointer((nid, k)) for k in range(len(types_of(g.nodes[nid]["type"])))]
        ins = [pointer(key) for key in _operand_keys(g, nid)]
        start = b.call(clock, []) if clock is not None else None
        b.call(kfn, outs + ins + [status])
        if clock is not None:
            slot = b.gep(counters, [ir.Constant(i32, 0), ir.Constant(i32, index)], inbounds=True)
            b.store(b.add(b.load(slot), b.sub(b.call(clock, []), start)), slot)
        if check_every or get_op(g.nodes[nid]["op"]).may_fail:
            _return_if_failed(b, status, failed_node, nid)
    _return_if_failed(b, status, failed_node, -1)  # the commit needs a clean status, whatever set it
    if commit:
        _emit_commit(module, b, g, pointer)
    b.ret(ir.Constant(i32, 0))


def _emit_commit(module, b, g, pointer):
    """Copy each state update into its variable (those computed in the variable's own buffer need none)."""
    plan = g.graph["plan"]
    memcpy = module.globals.get("llvm.memcpy.p0.p0.i64") or ir.Function(
        module, ir.FunctionType(void, [i8p, i8p, i64, ir.IntType(1)]), name="llvm.memcpy.p0.p0.i64")
    from ...passes.memory_plan import _nbytes
    for var, value in g.graph["updates"].items():
        dst, src = plan["root"][(var, 0)], plan["root"][(value, 0)]
        if dst == src:
            continue
        b.call(memcpy, [pointer((var, 0)), pointer((value, 0)), c64(_nbytes(g.nodes[var]["type"])),
                        ir.Constant(ir.IntType(1), 0)])


def _return_if_failed(b, status, failed_node, nid):
    """if (*status) { failed_node = nid; return *status; } (nid -1: unknown)."""
    code = b.load(status)
    with b.if_then(b.icmp_signed("!=", code, ir.Constant(i32, 0)), likely=False):
        b.store(ir.Constant(i32, nid), failed_node)
        b.ret(code)
