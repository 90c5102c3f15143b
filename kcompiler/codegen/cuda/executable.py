"""The CUDA backend's executable: a step program (module.py) bound to device memory.

What lives where:

- **Variables** (weights, optimizer state, metric state) live on the device across steps:
  each has one ``DeviceCopy`` per process, shared by every program that uses it (the training,
  evaluation and prediction programs of a model, each batch size), kept coherent with the
  host value by the protocol of codegen/residence.py (``get_weights`` downloads, ``set_weights``
  uploads before the next step).
- **Constants and fills** are uploaded once, when the program is bound.
- **Per caller** (``_Context``, one per concurrent step, from a pool as in the CPU backend):
  the arena with the error record, a device buffer and a host staging array per input, and
  the result buffer: the error record then every output, packed by one ``kc_copies`` launch,
  so that one device->host copy brings back everything a step returns.

A step: copy the inputs into staging and upload them; upload any variable the host changed;
zero the error record; enqueue every launch, then the commit (``kc_copies`` over the state
updates, which returns without copying when the status is set), then the pack; download the
result; wait for the stream once. No host synchronisation happens between launches, and the
host moves only the inputs in and the result out. A failed step raises ``step_error``'s
exception with every variable untouched; a successful one marks its updated variables newer
on the device.

The Python work per step grows with the number of launches (one call each): pycuda has no
cheaper way to enqueue a fixed sequence short of CUDA graphs.
"""
import threading

import numpy as np

from ...errors import KCompilerError, UnsupportedError
from .. import residence
from ..backend import step_error, step_logs
from .module import COPIES_FUNCTION
from .render import Launch

ALIGN = 64
RECORD_BYTES = 16  # i32 status, i32 node, i64 value (passes/memory_plan.py)


class DeviceCopy:
    """The device's copy of one variable's value (``host``: the variable's own array)."""

    def __init__(self, device, host):
        self.device, self.host = device, host
        self.buffer = device.alloc(host.nbytes)
        self.upload()

    def upload(self):
        with self.device.activate():
            self.device.upload(self.buffer.ptr, self.host)
            self.device.synchronize()

    def download(self):
        with self.device.activate():
            self.device.download(self.host, self.buffer.ptr)
            self.device.synchronize()

    def host_read(self):
        residence.host_read(self)

    def host_written(self):
        residence.host_written(self)


_copies_lock = threading.Lock()


def device_copy(device, variable):
    """The device copy of ``variable`` (made and uploaded on first use)."""
    with _copies_lock:
        copy = variable._device_copy
        if copy is None:
            copy = variable._device_copy = residence.registered(DeviceCopy(device, variable.numpy()))
        elif copy.device is not device:
            raise UnsupportedError(f"variable {variable.path!r} is kept by {copy.device.name}; a program for "
                                   f"{device.name} cannot use it in the same process")
        return copy


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


class CudaExecutable:
    def __init__(self, g, module, kernels):
        self.graph, self.module, self.kernels = g, module, kernels
        self.device = device = module.device
        self.program = module.program
        plan = g.graph["plan"]
        self.inputs = {}             # name -> (shape, dtype)
        self._input_slots = []       # (name, param slot, shape, dtype)
        self._param_pointers = []    # device address per param slot; None for inputs (per context)
        self._owned = []             # device buffers of constants and fills
        copies = {}                  # variable node -> DeviceCopy
        with device.activate():
            for slot, nid in enumerate(plan["params"]):
                node, t = g.nodes[nid], g.nodes[nid]["type"]
                if node["op"] == "input":
                    name = node["attrs"]["name"]
                    self.inputs[name] = (tuple(t.shape), np.dtype(t.dtype))
                    self._input_slots.append((name, slot, tuple(t.shape), t.dtype))
                    self._param_pointers.append(None)
                    continue
                if node["op"] == "variable":
                    copies[nid] = device_copy(device, g.graph["variables"][nid])
                    self._param_pointers.append(copies[nid].buffer.ptr)
                    continue
                if node["op"] == "constant":
                    value = (np.ascontiguousarray(g.graph["constants"][nid], dtype=t.dtype) if node["attrs"].get("array")
                             else np.full((), node["attrs"]["value"], dtype=t.dtype))
                else:  # fill
                    value = np.full(t.shape, node["attrs"]["value"], dtype=t.dtype)
                buffer = device.alloc(value.nbytes)
                device.upload(buffer.ptr, value)
                device.synchronize()
                self._owned.append(buffer)
                self._param_pointers.append(buffer.ptr)
        self._updated = tuple(copies[var] for var, value in g.graph["updates"].items()
                              if plan["root"][(var, 0)] != plan["root"][(value, 0)])
        self.output_names = g.graph.get("output_names", [f"output_{i}" for i in range(len(g.graph["outputs"]))])
        self._free = [_Context(self)]

    def run(self, feeds, scalars=False):
        """One step: ``feeds`` maps input names to arrays; returns copies of the outputs, or with
        ``scalars`` {output name: float}."""
        try:
            context = self._free.pop()
        except IndexError:  # every context is in use by another thread
            context = _Context(self)
        device = self.device
        try:
            with device.activate():
                for name, host, buffer in context.staging:
                    value = feeds[name]
                    if value.shape != host.shape if type(value) is np.ndarray else np.shape(value) != host.shape:
                        raise KCompilerError(f"input {name!r}: expected shape {host.shape}, got {np.shape(value)}")
                    host[...] = value
                    device.upload(buffer.ptr, host)
                residence.sync_device()
                device.zero(context.record_ptr, RECORD_BYTES)
                for launch in context.launches:
                    launch()
                device.download(context.result_host, context.result.ptr)
                device.synchronize()
            status = int(context.record[:4].view(np.int32)[0])
            if status:
                raise step_error(self.graph, status, context.record, offset=0)
            if self._updated:
                residence.device_written(self._updated)
            if scalars:
                return step_logs(self.output_names, context.outputs)
            return [np.array(v) for v in context.outputs]
        finally:
            self._free.append(context)


class _Context:
    """One caller's device memory (arena, inputs, result) and the launches bound to it."""

    def __init__(self, executable):
        with executable.device.activate():
            self._bind(executable)

    def _bind(self, executable):
        device, program = executable.device, executable.program
        self.arena = device.alloc(max(program.arena_bytes, ALIGN))
        self.record_ptr = self.arena.ptr + program.error_record
        pointers = list(executable._param_pointers)
        self.staging = []  # (input name, host staging array, device buffer)
        for name, slot, shape, dtype in executable._input_slots:
            host = device.host_array(shape, dtype)
            buffer = device.alloc(host.nbytes)
            pointers[slot] = buffer.ptr
            self.staging.append((name, host, buffer))

        def address(ref):
            return pointers[ref[1]] if ref[0] == "param" else self.arena.ptr + ref[1]

        module = executable.module.loaded
        self.launches = [device.launcher(module, s.launch, [address(b) for b in s.buffers] + [self.record_ptr])
                         for s in program.launches]
        # the result: the error record, then each output at the next aligned offset
        offsets, end = [], _aligned(RECORD_BYTES)
        for _, shape, dtype in program.outputs:
            offsets.append(end)
            end += _aligned(max(nbytes_of(shape, dtype), 1))
        self.result = device.alloc(end)
        self.result_host = device.host_array((end,), np.uint8)
        self.record = self.result_host[:RECORD_BYTES]
        self.outputs = [self.result_host[o:o + nbytes_of(shape, dtype)].view(dtype).reshape(shape)
                        for o, (_, shape, dtype) in zip(offsets, program.outputs)]
        self._tables = []  # the device buffers of the kc_copies tables
        if program.commits:
            self.launches.append(self._copies(device, module, True, [
                (address(dst), address(src), size) for dst, src, size in program.commits]))
        self.launches.append(self._copies(device, module, False, [(self.result.ptr, self.record_ptr, RECORD_BYTES)] + [
            (self.result.ptr + o, address(ref), nbytes_of(shape, dtype))
            for o, (ref, shape, dtype) in zip(offsets, program.outputs)]))

    def _copies(self, device, module, skip_when_failed, copies):
        """A launch of kc_copies over ``copies`` ((destination, source, bytes)), its table uploaded."""
        table = np.array([len(copies), int(skip_when_failed)] + [v for c in copies for v in c], dtype=np.int64)
        buffer = device.alloc(table.nbytes)
        device.upload(buffer.ptr, table)
        device.synchronize()
        self._tables.append(buffer)
        launch = Launch.grid_stride(COPIES_FUNCTION, max(max(c[2] for c in copies) // 4, 1))
        return device.launcher(module, launch, [buffer.ptr, self.record_ptr])


def nbytes_of(shape, dtype):
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
