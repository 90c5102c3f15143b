"""Memory planning: give every tensor of a static graph a buffer.

Parameters (inputs, variables, constants, fills) live in buffers the runtime owns
and passes in a pointer table ("param" slots). Views (reshape, tuple items) alias
their operand's buffer. Every other node's outputs get an offset in one arena;
tensors whose lifetimes do not overlap share bytes (first fit, in kernel order);
plan["lifetimes"] keeps each arena buffer's (first kernel, last kernel) for the report.
Graph outputs and state-update values stay live to the end of the step.

Variables change only after every kernel that can fail ran without error, which is what
makes a failed step change nothing: by default no kernel output is placed in a parameter
buffer, and the entry point copies the state updates into their variables at the end of the
step (codegen/llvm/module.py). With ``in_place_updates`` (a backend capability, off in
bounds-checked builds, where any kernel may fail) an update is computed in its variable's own
buffer instead — no copy, and no arena bytes for the new value (a wide layer's weights and
optimizer slots: W5 copied 14 MB per step) — when that is safe (``_in_place_updates``): its
kernel is an element-wise one (or a contraction's epilogue) that reads the variable at the
element it writes, every other reader of the variable runs before it, and no kernel that can
fail runs at or after it. The kernel learns it from its ``in_place`` attr ({output: operand}):
it stores that output through the operand's pointer, after reading the element.

A data-parallel training step has one ``all_reduce`` node (ops/collective.py). Its operands,
the scaled gradients, get one contiguous region at the start of the arena, alive the whole
step, followed by the node's extra float32 slots; its outputs alias its operands (the
reduction is in place). The kernel order puts every node that does not depend on the
all-reduce first: ``plan["collective"]`` says where the region lies and at which kernel
the order is split (the backend makes the two halves two native calls). Each operand must
be a kernel output that nothing else reads, so that reducing it in place changes nothing
another kernel sees.

The arena ends with the step's error record (ERROR_RECORD_BYTES at plan["error_record"]):
i32 status, i32 id of the node that failed, i64 the offending value. It lives in the
arena, not in the module, so concurrent callers (one arena each) do not share it.
"""
import networkx as nx

from ..errors import UnsupportedError
from ..ir.graph import copy_graph, operands, topo_order
from ..ir.registry import get_op
from ..ir.types import num_elements

PARAM_OPS = ("input", "variable", "constant", "fill")
VIEW_OPS = ("reshape", "tuple_item")
COLLECTIVE_OP = "all_reduce"
ALIGN = 64
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
ERROR_RECORD_BYTES = 16  # i32 status, i32 node id, i64 offending value


def _types(t):
    return list(t) if isinstance(t, tuple) else [t]


def _nbytes(t):
    return max(num_elements(t.shape) * ITEMSIZE[t.dtype], 1)


def plan_memory(g, in_place_updates=False):
    g = copy_graph(g)
    collectives = [n for n in g.nodes if g.nodes[n]["op"] == COLLECTIVE_OP]
    if len(collectives) > 1:
        raise UnsupportedError(f"a step has at most one all_reduce node, this one has {len(collectives)}")
    collective = collectives[0] if collectives else None
    order = [n for n in topo_order(g) if g.nodes[n]["op"] not in PARAM_OPS + VIEW_OPS + (COLLECTIVE_OP,)]
    buffers, params = {}, []
    for nid in topo_order(g):
        node = g.nodes[nid]
        for t in _types(node["type"]):
            if None in t.shape:
                raise UnsupportedError(f"node %{nid} ({node['op']}, from {node.get('layer')}) has a symbolic "
                                       f"shape {t.shape}: compile with a batch size")
        if node["op"] in PARAM_OPS:
            buffers[(nid, 0)] = ("param", len(params))
            params.append(nid)
        elif node["op"] == "reshape":
            buffers[(nid, 0)] = ("alias", (operands(g, nid)[0], 0))
        elif node["op"] == "tuple_item":
            buffers[(nid, 0)] = ("alias", (operands(g, nid)[0], node["attrs"]["index"]))

    def root(key):
        while buffers.get(key, ("arena",))[0] == "alias":
            key = buffers[key][1]
        return key

    region, collective_plan = {}, None
    if collective is not None:
        order, region, collective_plan = _collective_region(g, collective, order, root)
        for k, u in enumerate(operands(g, collective)):  # the outputs are the operands, reduced in place
            buffers[(collective, k)] = ("alias", (u, 0))

    in_place = {}  # variable node -> the kernel output computed in its buffer
    if in_place_updates and collective is None:
        chosen, notes = _in_place_updates(g, order, root)
        g.graph["notes"] = list(g.graph.get("notes", [])) + notes  # a new list: earlier stages keep theirs
        for (nid, k), var in chosen.items():
            in_place[var] = (nid, k)
            buffers[(nid, k)] = ("alias", (var, 0))
            node = g.nodes[nid]
            place = dict(node["attrs"].get("in_place", {}))
            place[k] = operands(g, nid).index(var)
            node["attrs"] = dict(node["attrs"], in_place=place)  # a new dict: earlier stages keep theirs

    step_of = {nid: s for s, nid in enumerate(order)}
    last_use = {}
    for s, nid in enumerate(order):
        for u in operands(g, nid):
            for k in range(len(_types(g.nodes[u]["type"]))):
                key = root((u, k))
                last_use[key] = max(last_use.get(key, -1), s)
    end = len(order)
    for o in list(g.graph["outputs"]) + list(g.graph["updates"].values()):
        for k in range(len(_types(g.nodes[o]["type"]))):
            last_use[root((o, k))] = end

    active = []  # (offset, end_offset, key)
    arena_bytes = 0
    if collective_plan is not None:  # the region is taken for the whole step
        active.append((0, collective_plan["bytes"], ("collective",)))
        last_use[("collective",)] = end + 1
        arena_bytes = collective_plan["bytes"]
    for s, nid in enumerate(order):
        for k, t in enumerate(_types(g.nodes[nid]["type"])):
            if buffers.get((nid, k), ("arena",))[0] == "alias":  # an update in its variable's buffer
                continue
            if (nid, k) in region:
                buffers[(nid, k)] = ("arena", region[(nid, k)], _nbytes(t))
                continue
            size = (_nbytes(t) + ALIGN - 1) // ALIGN * ALIGN
            offset = 0
            for a_off, a_end, _ in sorted(active):
                if offset + size <= a_off:
                    break
                offset = max(offset, a_end)
            buffers[(nid, k)] = ("arena", offset, size)
            active.append((offset, offset + size, (nid, k)))
            arena_bytes = max(arena_bytes, offset + size)
            last_use.setdefault((nid, k), s)  # an output nobody reads dies at once
        active = [a for a in active if last_use.get(a[2], step_of.get(a[2][0], -1)) > s]
    error_record = (arena_bytes + ALIGN - 1) // ALIGN * ALIGN
    # each arena buffer's first and last kernel (indices into order), for the report's chart
    lifetimes = {key: (step_of[key[0]], last_use[key]) for key, where in buffers.items() if where[0] == "arena"}
    g.graph["plan"] = {"order": order, "buffers": buffers, "params": params, "lifetimes": lifetimes,
                       "arena_bytes": error_record + ERROR_RECORD_BYTES, "error_record": error_record,
                       "root": {key: root(key) for key in buffers}, "in_place": in_place}
    if collective_plan is not None:
        g.graph["plan"]["collective"] = collective_plan
    return g


# kernels that can compute an output in the buffer of an operand of the same shape: each reads
# that operand at the element it writes, before writing it (schedule/elementwise.py,
# codegen/llvm/epilogue.py); a fused_contraction's output 0 holds its head's product first
IN_PLACE_OPS = {"fused": 0, "fused_contraction": 1, "fused_updates": 0}


def _in_place_updates(g, order, root):
    """({(kernel node, output index): variable node} of the state updates that can be computed in
    their variable's buffer (see the module docstring), notes on each decision for the dumps)."""
    step_of = {nid: s for s, nid in enumerate(order)}
    last_fallible = max((s for s, nid in enumerate(order) if get_op(g.nodes[nid]["op"]).may_fail), default=-1)
    readers = {}  # buffer root -> steps of the kernels that read it
    for s, nid in enumerate(order):
        for u in operands(g, nid):
            for k in range(len(_types(g.nodes[u]["type"]))):
                readers.setdefault(root((u, k)), []).append(s)
    kept = {root((o, k)) for o in g.graph["outputs"] for k in range(len(_types(g.nodes[o]["type"])))}
    chosen, notes = {}, []
    for var, value in g.graph["updates"].items():
        key = root((value, 0))
        nid, k = key
        node = g.nodes[nid]
        first_output = IN_PLACE_OPS.get(node["op"])
        if first_output is None or k < first_output or key in chosen or nid not in step_of:
            continue
        ops = operands(g, nid)
        step = step_of[nid]
        later = [order[s] for s in readers.get((var, 0), []) if s > step]
        if var not in ops or ops.count(var) > 1 or (node["op"] == "fused_contraction"
                                                    and ops.index(var) < node["attrs"]["n_head"]):
            why = "its kernel does not read the variable once, element by element"
        elif g.nodes[var]["type"] != _types(node["type"])[k] or (var, 0) in kept:
            why = "the variable is also a result of the step" if (var, 0) in kept else "the types differ"
        elif step <= last_fallible:
            why = f"%{order[last_fallible]} {g.nodes[order[last_fallible]]['op']}, which can fail, runs after it"
        elif later:
            why = f"%{later[0]} {g.nodes[later[0]]['op']} reads the old value after it"
        else:
            chosen[key] = var
            notes.append(f"update of %{var} computed in its buffer by %{nid} {node['op']}: saves a "
                         f"{_nbytes(g.nodes[var]['type'])}-byte copy and its arena bytes")
            continue
        notes.append(f"update of %{var} by %{nid} {node['op']} not computed in place: {why}")
    return chosen, notes


def _collective_region(g, collective, order, root):
    """(kernel order split at the all-reduce, {operand buffer key: offset in the region},
    the plan's "collective" record) for all_reduce node ``collective``."""
    after = nx.descendants(g, collective)
    order = [n for n in order if n not in after] + [n for n in order if n in after]
    keys = [root((u, 0)) for u in operands(g, collective)]
    for u, key in zip(operands(g, collective), keys):
        if g.nodes[key[0]]["op"] in PARAM_OPS or keys.count(key) > 1:
            raise UnsupportedError(f"all_reduce operand %{u} is not a kernel output of its own "
                                   f"(its buffer is that of %{key[0]} {g.nodes[key[0]]['op']})")
    readers = {}
    for nid in order:  # who reads each operand buffer besides the all-reduce
        for u in operands(g, nid):
            readers.setdefault(root((u, 0)), []).append(nid)
    for o in list(g.graph["outputs"]) + list(g.graph["updates"].values()):
        readers.setdefault(root((o, 0)), []).append(o)
    region, offset = {}, 0
    for u, key in zip(operands(g, collective), keys):
        if readers.get(key):
            raise UnsupportedError(f"all_reduce operand %{u} is also read by %{readers[key][0]} "
                                   f"({g.nodes[readers[key][0]]['op']}): it cannot be reduced in place")
        region[key] = offset
        offset += (_nbytes(g.nodes[u]["type"]) + ALIGN - 1) // ALIGN * ALIGN
    extra_slots = int(g.nodes[collective]["attrs"].get("extra_slots", 0))
    region_bytes = (offset + 4 * extra_slots + ALIGN - 1) // ALIGN * ALIGN
    split = sum(1 for n in order if n not in after)
    return order, region, {"node": collective, "offset": 0, "bytes": region_bytes, "extra_offset": offset,
                           "extra_slots": extra_slots, "split": split}
