"""What the report shows, gathered from one compiled program into plain JSON-able data.

``collect(model, ...)`` compiles ``model`` once with the kernel profiler on (KCOMPILER_PROFILE's
option), runs a few steps on the given or synthetic data, and returns a dict:

* ``model``: name and the Keras summary table; ``settings``: target, batch size, training, ...;
* ``stages``: per pipeline stage its nodes (op, type, layer, attributes, fused members, phase,
  kernel name, memory-plan slot, kernel description) and an index into ``svgs`` (the stages
  after fusion share one drawing);
* ``kernels``: each generated kernel with its source (LLVM IR or CUDA C, very long ones
  elided in the middle), FLOPs and bytes moved (kcompiler/flops.py) and, on the CPU, the
  profiler's time per step and the fraction of the machine's FMA peak it reaches;
* ``notes``: the fusion notes (why each pair was or was not fused);
* ``memory``: the arena size and every arena buffer's offset, size and lifetime;
* ``comparison``: kcompiler.benchmark's fused against unfused step (kernels, bytes, time).

Profiling and the comparison run real steps: the model's weights and its optimizer's state are
restored afterwards, so writing a report leaves the model as it was.
"""
import os

import numpy as np

from ..flops import node_bytes, node_flops
from ..ir.graph import operands
from ..ir.printer import _fmt_attrs, _fmt_type
from ..options import resolve
from ..passes.memory_plan import PARAM_OPS
from .draw import draw

STAGE_TITLES = {"traced": "traced", "shaped": "shaped", "differentiated": "differentiated", "fused": "fused",
                "planned": "planned", "scheduled": "kernel description"}
SOURCE_LIMIT = 200_000  # characters of one kernel's source kept (head and tail) in the page
ATTRS_LIMIT = 400


def phases(g):
    """node id -> 'param' (inputs, weights, constants), 'forward' (what the graph's outputs need:
    the forward pass, loss and metrics), 'backward' (what only the state updates need: gradients
    and optimizer steps) or 'unused' (needed by neither, e.g. the gradient of an input, which
    the simplify pass drops before fusion)."""
    forward, backward = set(g.graph["outputs"]), set(g.graph.get("updates", {}).values())
    for o in g.graph["outputs"]:
        forward |= _ancestors(g, o)
    for value in list(backward):
        backward |= _ancestors(g, value)

    def phase(nid):
        if g.nodes[nid]["op"] in PARAM_OPS:
            return "param"
        return "forward" if nid in forward else "backward" if nid in backward else "unused"
    return {nid: phase(nid) for nid in g.nodes}


def _ancestors(g, nid):
    seen, todo = set(), [nid]
    while todo:
        for u in g.predecessors(todo.pop()):
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def _node_record(g, nid, phase, kernel_of, plan):
    node = g.nodes[nid]
    attrs = _fmt_attrs(node.get("attrs", {})).strip()
    record = {"id": nid, "op": node["op"], "type": _fmt_type(node["type"]), "layer": node.get("layer"),
              "attrs": attrs if len(attrs) <= ATTRS_LIMIT else attrs[:ATTRS_LIMIT] + " ...}",
              "phase": phase, "inputs": list(operands(g, nid)), "outputs": sorted(set(g.successors(nid)))}
    if node.get("fused"):
        record["members"] = list(node["fused"])
    if nid in kernel_of:
        record["kernel"] = kernel_of[nid]
    if plan is not None and (nid, 0) in plan["buffers"]:
        where = plan["buffers"][plan["root"][(nid, 0)]]
        record["buffer"] = (f"param slot {where[1]}" if where[0] == "param"
                            else f"arena bytes {where[1]}..{where[1] + where[2]}")
    if "kernel" in node:
        record["description"] = str(node["kernel"])
    return record


def _stage_records(stages, kernel_of):
    records, svgs, svg_index = [], [], {}
    for name, g in stages.items():
        phase = phases(g)
        plan = g.graph.get("plan")
        svg = draw(g, phase)
        if svg not in svg_index:  # fused, planned and scheduled draw the same graph
            svg_index[svg] = len(svgs)
            svgs.append(svg)
        nodes = [_node_record(g, nid, phase[nid], kernel_of if plan is not None else {}, plan) for nid in g.nodes]
        records.append({"name": name, "title": STAGE_TITLES.get(name, name), "svg": svg_index[svg], "nodes": nodes,
                        "outputs": list(g.graph["outputs"])})
    return records, svgs


def _elide(source, limit=SOURCE_LIMIT):
    if len(source) <= limit:
        return source
    head, tail = source[:limit // 2], source[-limit // 2:]
    head, tail = head[:head.rfind("\n") + 1], tail[tail.find("\n") + 1:]
    skipped = source.count("\n") - head.count("\n") - tail.count("\n")
    return f"{head}\n;; ... {skipped} lines elided from the report ...\n\n{tail}"


def _kernel_records(program, cycles_per_step, cycle_hz, peak_gflops):
    g = program.graph
    language = "cuda" if program.target == "cuda" else "llvm"
    records = []
    for k in program.kernels:
        flops = sum(node_flops(g, nid) for nid in k.nodes)
        moved = sum(node_bytes(g, nid) for nid in k.nodes)
        record = {"name": k.name, "op": k.op, "nodes": list(k.nodes), "members": list(k.fused),
                  "flops": flops, "bytes": moved, "language": language, "source": _elide(k.source)}
        if k.name in cycles_per_step:
            seconds = cycles_per_step[k.name] / cycle_hz
            record["seconds"] = seconds
            record["gflops"] = flops / seconds / 1e9 if seconds > 0 else None
            record["peak_fraction"] = record["gflops"] / peak_gflops if record["gflops"] is not None else None
        records.append(record)
    return records


def _memory(g):
    plan = g.graph["plan"]
    buffers = []
    for (nid, k), (first, last) in plan["lifetimes"].items():
        where = plan["buffers"][(nid, k)]
        buffers.append({"node": nid, "output": k, "op": g.nodes[nid]["op"], "offset": where[1], "size": where[2],
                        "first": first, "last": last})
    return {"arena_bytes": plan["arena_bytes"], "kernels": len(plan["order"]), "buffers": buffers}


def synthetic_batch(model, program, batch_size, seed=0):
    """Random inputs of the model's input types and, for training, labels of the traced step's
    label type (class ids 0 or 1 for integer labels: valid for every class count)."""
    rng = np.random.default_rng(seed)

    def fill(shape, dtype):
        if np.dtype(dtype).kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        return rng.integers(0, 2, shape).astype(dtype)

    xs = [fill((batch_size,) + tuple(t.shape[1:]), t.dtype) for _, t in model.input_types()]
    x = xs[0] if len(xs) == 1 else xs
    if not program.training:
        return x, None
    traced = program.stages["traced"]
    label = next(traced.nodes[n]["type"] for n in traced.graph["inputs"] if traced.nodes[n]["attrs"]["name"] == "y")
    return x, fill((batch_size,) + tuple(label.shape[1:]), label.dtype)


class _Restored:
    """Puts the model's weights and its optimizer's state back as they were on entry."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.optimizer = getattr(self.model, "optimizer", None)
        self.weights = self.model.get_weights()
        self.state = self.optimizer.get_weights() if self.optimizer is not None else None

    def __exit__(self, *exc):
        self.model.set_weights(self.weights)
        if self.state is not None:
            self.optimizer.set_weights(self.state)


def collect(model, x=None, y=None, *, batch_size=None, training=None, target="cpu", steps=5, compare=True,
            peak_gflops=None, options=None):
    """The report's data (module docstring). ``training`` defaults to whether labels are given
    or the model was compiled with a loss; ``x``/``y`` default to synthetic data of
    ``batch_size`` (default 32) samples; ``peak_gflops`` defaults to the FMA peak measured now."""
    import kcompiler
    from ..keras.summary import print_summary
    if training is None:
        training = y is not None or getattr(model, "compiled_loss", None) is not None
    if x is not None:
        batch_size = len(x[0] if isinstance(x, (list, tuple)) else x)
    batch_size = batch_size or 32
    options = resolve(options, profile=target == "cpu",
                      **({"cuda_emulation": True} if target == "cuda" and _no_gpu() else {}))
    program = kcompiler.compile(model, target=target, training=training, batch_size=batch_size, options=options)
    if x is None or (training and y is None):
        made_x, made_y = synthetic_batch(model, program, batch_size)
        x = made_x if x is None else x
        y = made_y if y is None else y
    cycles_per_step, cycle_hz = {}, None
    if target == "cpu":
        from ..codegen.llvm.peak import cycle_counter_hz, fma_peak
        with _Restored(model):
            run = (lambda: program.train_step(x, y)) if training else (lambda: program.predict(x))
            run()  # the first step pays for page faults and lazy set-up: not counted
            before = dict(program.profile())
            for _ in range(steps):
                run()
            cycles_per_step = {name: (c - before[name]) / steps for name, c in program.profile()}
        cycle_hz = cycle_counter_hz(0.1)
        if peak_gflops is None:
            peak_gflops = fma_peak(os.cpu_count() or 1, seconds=0.1, rounds=3)["gflops"]
    comparison = None
    if compare and target == "cpu":
        with _Restored(model):
            comparison = kcompiler.benchmark(model, x, y if training else None, steps=steps)
    summary = []
    print_summary(model, print_fn=summary.append)
    kernel_of = {nid: k.name for k in program.kernels for nid in k.nodes}
    stages, svgs = _stage_records(program.stages, kernel_of)
    notes = program.graph.graph.get("notes", [])
    return {
        "model": {"name": model.name, "summary": "\n".join(summary)},
        "settings": {"target": target, "batch_size": batch_size, "training": training, "steps": steps,
                     "opt_level": options.opt_level, "cycle_hz": cycle_hz, "peak_gflops": peak_gflops,
                     "kernels": len(program.kernels), "emulated": target == "cuda" and options.cuda_emulation},
        "stages": stages, "svgs": svgs, "notes": list(notes),
        "kernels": _kernel_records(program, cycles_per_step, cycle_hz, peak_gflops),
        "memory": _memory(program.graph),
        "comparison": comparison,
    }


def _no_gpu():
    """Whether no GPU is usable here: the report then renders the CUDA C and runs it emulated,
    and says so on the page."""
    from ..codegen.cuda.device import gpu_problem
    return gpu_problem() is not None
