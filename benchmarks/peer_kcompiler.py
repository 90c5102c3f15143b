"""kcompiler's worker for benchmarks/compare_peers.py: one workload, one variant (fused or
unfused code), in a fresh process of the environment kcompiler is installed in.

steady: times ``kcompiler.compile(model, training=True, batch_size=B).train_step`` and
``kcompiler.compile(model, batch_size=B).predict``, then the Keras-level
``model.train_on_batch`` and ``model.predict_on_batch``; reports the FLOPs of a training step
and of a forward pass counted from the IR (kcompiler/flops.py).
cold: builds the model and runs one ``train_on_batch``; prints the wall-clock time at its end.
profile: with KCOMPILER_PROFILE=1 (set by the runner), cycles per step of every kernel of the
training step and of the forward pass, with each kernel's FLOPs and bytes moved.

    python benchmarks/peer_kcompiler.py fused W2 [--mode steady|cold|profile] [--windows 5]
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import emit, window_timer, worker_arguments  # noqa: E402


def workload(name):
    from benchmarks.workloads import DEEP_WORKLOADS, WORKLOADS
    return {**WORKLOADS, **DEEP_WORKLOADS}[name]


def build(w, fuse):
    model = w.make_model()
    model.compile(optimizer=w.optimizer(), loss=w.loss(), fuse=fuse)
    return model


def profile(program, run, steps, cycle_hz):
    """Per kernel of ``program``: cycles and seconds per step over ``steps`` runs after a warm-up."""
    from kcompiler.flops import kernel_bytes, kernel_flops
    run()
    before = dict(program.profile())
    for _ in range(steps):
        run()
    after = dict(program.profile())
    g = program.graph
    rows = []
    for k in program.kernels:
        cycles = (after[k.name] - before[k.name]) / steps
        rows.append({"kernel": k.name, "op": k.op, "fused": list(k.fused), "cycles": cycles,
                     "seconds": cycles / cycle_hz, "flops": kernel_flops(g, k), "bytes": kernel_bytes(g, k)})
    return sorted(rows, key=lambda r: -r["cycles"])


def main():
    args = worker_arguments(__doc__.split("\n\n")[0], ["fused", "unfused"])
    fuse = args.variant == "fused"
    if args.mode == "cold":
        w = workload(args.workload)
        model = build(w, fuse)
        x, y = w.data()
        model.train_on_batch(x, y)
        emit({"end": time.time()})
        return
    import kcompiler
    from kcompiler.flops import graph_flops
    w = workload(args.workload)
    model = build(w, fuse)
    x, y = w.data()
    infer = kcompiler.compile(model, fuse=fuse, batch_size=w.batch_size)
    train = kcompiler.compile(model, fuse=fuse, training=True, batch_size=w.batch_size)
    result = {"version": kcompiler.__version__,
              "flops": {"train": graph_flops(train.graph), "predict": graph_flops(infer.graph)},
              "kernels": {"train": len(train.kernels), "predict": len(infer.kernels)}}
    if args.mode == "profile":
        from benchmarks.machine_peak import cycle_counter_hz
        hz = cycle_counter_hz()
        result.update(cycle_hz=hz, predict=profile(infer, lambda: infer.predict(x), args.steps, hz),
                      train=profile(train, lambda: train.train_step(x, y), args.steps, hz))
        emit(result)
        return
    timed = window_timer(args)
    result["cells"] = {"predict": timed(lambda: infer.predict(x)),
                       "train_step": timed(lambda: train.train_step(x, y)),
                       "predict_on_batch": timed(lambda: model.predict_on_batch(x)),
                       "train_on_batch": timed(lambda: model.train_on_batch(x, y))}
    emit(result)


if __name__ == "__main__":
    main()
