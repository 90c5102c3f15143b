"""The LLVM backend's executable: a scheduled, compiled graph bound to its host buffers.

Everything a step needs is set up once: the arena, staging buffers for the inputs,
the parameter pointer table (inputs, variables, constants), numpy views of the
outputs. A step is then: copy the inputs into staging, one native call, copy the
outputs out. The Python work per step does not grow with the model.

Thread safety: the buffers a step writes (arena, input staging, and so the pointer
table that points at the staging) belong to a ``_Context``. A step takes a free context
from the graph's pool (a list: pop and append are atomic in CPython), or makes a new one
when every context is in use by another thread, and puts it back once its outputs are
copied out. Concurrent steps therefore never share scratch memory and never wait for each
other; the pool holds as many contexts as there were concurrent callers. Variables and
constants are shared by all contexts: steps that update variables (training) must not
run concurrently with each other.

Variables a device also keeps (codegen/residence.py: the CUDA backend's resident state) are
made current on the host before a step reads them, and marked written after it updated them;
a process that never used a device skips both.

A data-parallel step (a plan split at an all-reduce, codegen/llvm/module.py) runs as
``kc_entry``, then the caller's ``collective`` on the context's region (a float32 view of the
arena: the gradients, then the extra slots, also given as their own view; reduced in place,
no copy), then ``kc_entry_update``; a status that any rank reports stops it before the update.

The compiled engine lives as long as this object (its ``_entry`` function references the
CompiledModule); nothing else keeps it alive.
"""
import ctypes

import numpy as np

from ...errors import KCompilerError
from .. import residence
from ..backend import step_error, step_logs

def _aligned_empty(nbytes, align=64):
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + nbytes]


class _Context:
    """One caller's buffers: arena, input staging, the pointer table over them and the
    shared parameters, the native call's arguments, and views of the outputs."""
    __slots__ = ("arena", "staging", "param_table", "args", "outputs", "region", "extras", "outputs_before_split")

    def __init__(self, compiled):
        plan = compiled.graph.graph["plan"]
        self.arena = _aligned_empty(max(plan["arena_bytes"], 64))
        params = list(compiled._shared_params)
        self.staging = []
        for name, slot, shape, dtype in compiled._input_slots:
            buf = np.zeros(shape, dtype=dtype)
            params[slot] = buf
            self.staging.append((name, buf))
        self.param_table = (ctypes.c_void_p * max(len(params), 1))(*[p.ctypes.data for p in params])
        self.args = (ctypes.addressof(self.param_table), self.arena.ctypes.data)
        self.outputs = [compiled._view(o, params, self.arena) for o in compiled.graph.graph["outputs"]]
        collective = plan.get("collective")
        self.region = self.extras = None
        self.outputs_before_split = [self.outputs[i] for i in compiled._outputs_before_split]
        if collective is not None:
            self.region = self.arena[collective["offset"]:collective["offset"] + collective["bytes"]].view(np.float32)
            first = (collective["extra_offset"] - collective["offset"]) // 4
            self.extras = self.region[first:first + collective["extra_slots"]]


class CompiledGraph:
    def __init__(self, g, compiled_module, kernels):
        self.graph = g
        self.module = compiled_module
        self.kernels = kernels
        plan = g.graph["plan"]
        self.inputs = {}  # name -> (shape, dtype)
        self._input_slots = []  # (name, param slot, shape, dtype): the parameters each context stages
        self._shared_params = []  # variables, constants, fills; None in the input slots
        for nid in plan["params"]:
            node = g.nodes[nid]
            t = node["type"]
            if node["op"] == "input":
                name = node["attrs"]["name"]
                self.inputs[name] = (tuple(t.shape), np.dtype(t.dtype))
                self._input_slots.append((name, len(self._shared_params), tuple(t.shape), t.dtype))
                buf = None
            elif node["op"] == "variable":
                buf = g.graph["variables"][nid].numpy()
                if not buf.flags.c_contiguous:
                    raise KCompilerError(f"variable {node['attrs']['name']} is not contiguous")
            elif node["op"] == "constant":
                buf = (np.ascontiguousarray(g.graph["constants"][nid], dtype=t.dtype) if node["attrs"].get("array")
                       else np.full((), node["attrs"]["value"], dtype=t.dtype))
            else:  # fill
                buf = np.full(t.shape, node["attrs"]["value"], dtype=t.dtype)
            self._shared_params.append(buf)
        self._variables = [g.graph["variables"][nid] for nid in plan["params"] if g.nodes[nid]["op"] == "variable"]
        # the variables a step writes: by the commit's copies, or in place (memory_plan.py)
        self._updated_variables = [g.graph["variables"][v] for v, value in g.graph["updates"].items()
                                   if plan["root"][(v, 0)] != plan["root"][(value, 0)] or v in plan["in_place"]]
        self._entry = compiled_module.function("kc_entry", ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
        self.collective = plan.get("collective")  # where the step is split for the all-reduce, or None
        self._update_entry = None if self.collective is None else compiled_module.function(
            "kc_entry_update", ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
        # the outputs the first call computes (the loss, batch metrics; not the results of stateful
        # metrics, which read the reduced state): what the collective may sum and rewrite
        after_split = set(plan["order"][self.collective["split"]:]) if self.collective else set()
        self._outputs_before_split = [i for i, o in enumerate(g.graph["outputs"])
                                      if plan["root"][(o, 0)][0] not in after_split]
        self.output_names = g.graph.get("output_names", [f"output_{i}" for i in range(len(g.graph["outputs"]))])
        self._free = [_Context(self)]  # contexts not in use by a step

    def profile(self, reset=False):
        """[(kernel name, cycles)] summed over the runs so far (since the last ``reset``), most
        expensive first; needs a program compiled with KCOMPILER_PROFILE=1 (concurrent runs may
        lose counts). ``reset``: the counts start again from zero after this call."""
        try:
            address = self.module.address("kc_profile_cycles")
        except KeyError:
            raise KCompilerError("compile with KCOMPILER_PROFILE=1 to profile kernels") from None
        cycles = np.ctypeslib.as_array((ctypes.c_int64 * len(self.kernels)).from_address(address))
        rows = sorted(zip((k.name for k in self.kernels), cycles.tolist()), key=lambda kv: -kv[1])
        if reset:
            cycles[:] = 0
        return rows

    def _view(self, nid, params, arena):
        plan = self.graph.graph["plan"]
        t = self.graph.nodes[nid]["type"]
        key = plan["root"][(nid, 0)]
        where = plan["buffers"][key]
        if where[0] == "param":
            base = params[where[1]]
            return base.reshape(t.shape) if base.size == int(np.prod(t.shape)) else base
        nbytes = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
        return arena[where[1]:where[1] + nbytes].view(t.dtype).reshape(t.shape)

    def run(self, feeds, scalars=False, collective=None):
        """One step: feeds maps input names to arrays; returns copies of the outputs, or with
        ``scalars`` (outputs that are scalars: loss, metrics) {output name: float}.
        ``collective(region, extras, status, outputs)``: for a step split at an all-reduce, reduces
        the region in place between the two native calls (and may rewrite ``outputs``, those the
        first call computed); it raises when another process's step failed. Without it the region
        is left as it is (one process)."""
        try:
            context = self._free.pop()
        except IndexError:  # every context is in use by another thread
            context = _Context(self)
        try:
            for name, buf in context.staging:
                value = feeds[name]
                if value.shape != buf.shape if type(value) is np.ndarray else np.shape(value) != buf.shape:
                    raise KCompilerError(f"input {name!r}: expected shape {buf.shape}, got {np.shape(value)}")
                buf[...] = value
            if residence.in_use():
                residence.sync_host(self._variables)
            status = self._entry(*context.args)
            self.module.confirm()  # the code ran: drop the crash marker of the cache entry it came from
            if self._update_entry is not None:
                if collective is not None:
                    collective(context.region, context.extras, status, context.outputs_before_split)
                if not status:
                    status = self._update_entry(*context.args)
            if status:
                raise step_error(self.graph, status, context.arena)
            if self._updated_variables and residence.in_use():
                residence.host_written_variables(self._updated_variables)
            if scalars:
                return step_logs(self.output_names, context.outputs)
            return [np.array(v) for v in context.outputs]
        finally:
            self._free.append(context)
