"""Memory planning: give every tensor of a static graph a buffer.

Parameters (inputs, variables, constants, fills) live in buffers the runtime owns
and passes in a pointer table ("param" slots). Views (reshape, tuple items) alias
their operand's buffer. Every other node's outputs get an offset in one arena;
tensors whose lifetimes do not overlap share bytes (first fit, in kernel order);
plan["lifetimes"] keeps each arena buffer's (first kernel, last kernel) for the report.
Graph outputs and state-update values stay live to the end of the step.

No kernel output is ever placed in a parameter buffer: variables change only when the
entry point copies the state updates into them after every kernel ran without error
(codegen/llvm/module.py), which is what makes a failed step change nothing.

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


def plan_memory(g):
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
                       "root": {key: root(key) for key in buffers}}
    if collective_plan is not None:
        g.graph["plan"]["collective"] = collective_plan
    return g


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
