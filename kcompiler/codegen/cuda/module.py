"""CUDA code generation for a planned graph: one translation unit per step, and the step
program that launches it.

``generate(g)`` renders each node of ``plan["order"]`` (render.render_node: its kernel
description, or its op's CUDA template) under a name derived from a hash of its own text, so
identical kernels (a deep network repeats shapes) are one set of functions in the unit. The
unit is the prelude, the distinct kernels, then ``kc_copies`` (COPIES), the one kernel the
runtime adds.

The step program (``StepProgram``) is what the executable binds once and replays every step:

- ``launches``: in plan order, each launch of each node with the buffers its parameters
  point to: ``("param", slot)`` (a buffer of plan["params"]: an input, variable, constant or
  fill) or ``("arena", offset)``, the same memory plan as the CPU's; the error record
  (``plan["error_record"]`` in the arena) follows as the last parameter.
- ``commits``: the state updates, ``(destination, source, bytes)``: the variable's buffer and
  its new value's. The runtime performs them with ``kc_copies``, which reads the step's status
  first and returns when it is set: a failed step leaves every variable as it was. No kernel
  writes a variable's buffer (passes/memory_plan.py), so nothing else can change one.
- ``outputs``: where each output of the graph is, with its shape and dtype.
- ``arena_bytes``: the plan's arena plus the *scratch* region after it. A template may take
  buffers beyond its node's (the recurrent kernels keep the input projection and the states
  of every step there between their launches): they point into the scratch region, which
  every such kernel reuses (kernels run one after another on the stream), so it is as large
  as the largest kernel's scratch.

A failing node (an index out of range) records the first error in the record (``kc_fail``
writes the node's id itself); the launches after it still run, on values that no longer
matter, because a device cannot stop a queued sequence of launches without a host round trip:
only the commit is conditional, and the runtime reads the record once the step is done.
"""
import dataclasses
import hashlib
from dataclasses import dataclass, field

from ...errors import UnsupportedError
from ...ir.graph import inline_constants, operands
from ...ir.types import num_elements
from ...passes.memory_plan import ITEMSIZE
from .render import module_source, render_node

DTYPES = ("float32", "int32", "int64", "bool")
SCRATCH_ALIGN = 256

# A kernel's functions are named from this while its text is hashed, then from the hash.
_PLACEHOLDER = "kc_unit_placeholder"

# Copies between buffers of a step: ``table`` = {count, skip the copies when the step failed
# (0 or 1), then per copy: destination address, source address, bytes}. Word copies where
# whole words remain (every buffer starts 64-byte aligned), then the tail bytes.
COPIES = r'''
extern "C" __global__ void kc_copies(const long long* __restrict__ table, const int* __restrict__ error) {
    if (table[1] != 0 && error[0] != 0) return;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long c = 0; c < table[0]; ++c) {
        unsigned char* dst = (unsigned char*)table[2 + 3 * c];
        const unsigned char* src = (const unsigned char*)table[3 + 3 * c];
        const long long bytes = table[4 + 3 * c];
        for (long long i = first; i < bytes / 4; i += stride)
            ((unsigned int*)dst)[i] = ((const unsigned int*)src)[i];
        for (long long i = bytes / 4 * 4 + first; i < bytes; i += stride)
            dst[i] = src[i];
    }
}
#ifndef __CUDACC__
extern "C" void kc_copies_emulate(const unsigned int* blocks, const unsigned int* threads, void** args) {
    kc_launch(kc_copies, blocks[0], threads[0], (const long long*)args[0], (const int*)args[1]);
}
#endif
'''
COPIES_FUNCTION = "kc_copies"


@dataclass(frozen=True)
class StepLaunch:
    launch: object         # render.Launch: the module's function, grid and block
    buffers: tuple         # ("param", slot) | ("arena", offset) per parameter, before the error record
    node: int


@dataclass(frozen=True)
class StepProgram:
    launches: tuple        # StepLaunch, in order
    commits: tuple         # (destination, source, bytes): buffer references as in StepLaunch
    outputs: tuple         # (buffer reference, shape, dtype) per graph output
    error_record: int      # arena offset of the step's error record
    arena_bytes: int       # the plan's arena, then the scratch region


@dataclass
class CudaSource:
    """What ``generate`` hands the compiler: the translation unit and the step program."""
    text: str
    program: StepProgram

    def __str__(self):
        return self.text


@dataclass
class Kernel:
    name: str
    source: str            # the CUDA C of the node's kernel (its functions and emulation entries)
    nodes: list
    op: str = ""
    fused: list = field(default_factory=list)


def nbytes(t):
    return num_elements(t.shape) * ITEMSIZE[t.dtype]


def generate(g):
    """(CudaSource, [Kernel]) for planned, scheduled graph ``g``."""
    _check_supported(g)
    plan = g.graph["plan"]

    def where(key):
        found = plan["buffers"][plan["root"][key]]
        return ("param", found[1]) if found[0] == "param" else ("arena", found[1])

    scratch_offset = -(-plan["arena_bytes"] // SCRATCH_ALIGN) * SCRATCH_ALIGN
    scratch_bytes = 0
    functions, launches, kernels, missing = {}, [], [], []
    for nid in plan["order"]:
        node = g.nodes[nid]
        in_types = [g.nodes[u]["type"] for u in operands(g, nid)]
        try:
            cuda_kernel = render_node(node, in_types, inline_constants(g, nid), _PLACEHOLDER, node_id=nid)
        except UnsupportedError as e:
            missing.append(f"%{nid}: {e}")
            continue
        symbol = "kc_" + hashlib.sha256(cuda_kernel.source.encode()).hexdigest()[:24]
        source = cuda_kernel.source.replace(_PLACEHOLDER, symbol)
        functions.setdefault(symbol, source)
        outs = len(node["type"]) if isinstance(node["type"], tuple) else 1
        buffers = [where((nid, k)) for k in range(outs)] + [where((u, 0)) for u in operands(g, nid)]
        if len(buffers) > len(cuda_kernel.buffers):
            raise UnsupportedError(f"the CUDA kernel of node %{nid} {node['op']} takes {len(cuda_kernel.buffers)} "
                                   f"buffers, the node has {len(buffers)}")
        offset = 0
        for b in cuda_kernel.buffers[len(buffers):]:  # the kernel's scratch, one after another
            buffers.append(("arena", scratch_offset + offset))
            offset += -(-b.size * ITEMSIZE[b.dtype] // SCRATCH_ALIGN) * SCRATCH_ALIGN
        scratch_bytes = max(scratch_bytes, offset)
        buffers = tuple(buffers)
        for launch in cuda_kernel.launches:
            launches.append(StepLaunch(dataclasses.replace(launch, kernel=launch.kernel.replace(_PLACEHOLDER, symbol)),
                                       buffers, nid))
        kernels.append(Kernel(f"k{nid}_{node['op']}", source, [nid], node["op"], list(node.get("fused", []))))
    if missing:
        raise UnsupportedError("cannot generate CUDA code for:\n  " + "\n  ".join(missing))
    commits = tuple((where((var, 0)), where((value, 0)), nbytes(g.nodes[var]["type"]))
                    for var, value in g.graph["updates"].items() if plan["root"][(var, 0)] != plan["root"][(value, 0)])
    outputs = tuple((where((o, 0)), tuple(g.nodes[o]["type"].shape), g.nodes[o]["type"].dtype)
                    for o in g.graph["outputs"])
    text = "\n".join([module_source([]), *functions.values(), COPIES])
    program = StepProgram(tuple(launches), commits, outputs, plan["error_record"], scratch_offset + scratch_bytes)
    return CudaSource(text, program), kernels


def _check_supported(g):
    problems = []
    for nid in g.nodes:
        node = g.nodes[nid]
        for t in node["type"] if isinstance(node["type"], tuple) else (node["type"],):
            if t.dtype not in DTYPES:
                problems.append(f"%{nid} {node['op']} ({node.get('layer') or 'no layer'}): dtype {t.dtype}")
    if problems:
        raise UnsupportedError("cannot generate CUDA code for:\n  " + "\n  ".join(problems))
