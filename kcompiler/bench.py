"""kcompiler.benchmark: fused against unfused code for one model, measured in one run."""
import time

import numpy as np

from .ir.graph import operands
from .passes.memory_plan import PARAM_OPS, VIEW_OPS, _nbytes, _types


def node_bytes(g, nid):
    """Bytes node ``nid``'s kernel reads and writes once (its outputs and operands; parameters
    and views move nothing themselves): a lower bound on its memory traffic."""
    if g.nodes[nid]["op"] in PARAM_OPS + VIEW_OPS:
        return 0
    return (sum(_nbytes(t) for t in _types(g.nodes[nid]["type"]))
            + sum(_nbytes(g.nodes[u]["type"]) for u in operands(g, nid) if not isinstance(g.nodes[u]["type"], tuple)))


def bytes_moved(g):
    """Bytes every kernel reads and writes once (a lower bound on its memory traffic)."""
    return sum(node_bytes(g, nid) for nid in g.nodes)


def benchmark(model, x, y=None, modes=("unfused", "fused"), steps=20, warmup=3):
    """Time a step of ``model`` per mode: a training step when ``y`` is given (the model must be
    compiled with a loss; weights are restored afterwards), otherwise a forward pass. Returns
    {mode: {'step_seconds', 'kernels', 'bytes_moved'}}."""
    import kcompiler
    results = {}
    batch = len(x[0] if isinstance(x, (list, tuple)) else x)
    saved = model.get_weights()
    for mode in modes:
        if mode not in ("fused", "unfused"):
            raise ValueError(f"unknown mode {mode!r}; expected 'fused' or 'unfused'")
        program = kcompiler.compile(model, fuse=mode == "fused", training=y is not None, batch_size=batch)
        run = (lambda: program.train_step(x, y)) if y is not None else (lambda: program.predict(x))
        for _ in range(warmup):
            run()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        results[mode] = {"step_seconds": float(np.median(times)), "kernels": len(program.kernels),
                         "bytes_moved": bytes_moved(program.graph)}
    model.set_weights(saved)
    return results


def format_results(results):
    lines = [f"{'mode':<8} {'step (ms)':>10} {'kernels':>8} {'MB moved':>9}"]
    for mode, r in results.items():
        lines.append(f"{mode:<8} {r['step_seconds'] * 1e3:>10.3f} {r['kernels']:>8} {r['bytes_moved'] / 1e6:>9.2f}")
    return "\n".join(lines)
