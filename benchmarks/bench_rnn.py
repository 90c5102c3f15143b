"""Benchmark the recurrent kernels: LSTM(64) on Embedding(10000, 16) input, batch 32,
sequence 80 (the seed's IMDB model without its Dense head), compiled at O3.

Measures, in milliseconds (median and best of ``--reps`` runs after a warm-up):

* ``forward``: ``kcompiler.compile(model, batch_size=32)`` called on a batch of ids
  (Embedding gather + one lstm kernel + the runtime's input/output copies);
* ``forward+backward``: the traced graph of sum(lstm_output * r) and its gradients with
  respect to every weight (embedding, kernel, recurrent_kernel, bias) through the
  autodiff pass, compiled by ``lower_graph``: the lstm kernel, the lstm_grad kernel
  (which recomputes the forward) and the Embedding scatter-add;
* the two recurrent kernels alone (``lstm``, ``lstm_grad`` one-op graphs on the
  embedded input), with the loops split over the cores and on one thread.

Usage::

    python benchmarks/bench_rnn.py [--batch 32] [--time 80] [--units 64] [--reps 50] [--json out.json]
"""
import argparse
import datetime
import json
import os
import platform
import time

os.environ.setdefault("KCOMPILER_OPT_LEVEL", "3")  # read when kernels are compiled

import numpy as np  # noqa: E402

import kcompiler  # noqa: E402
import kcompiler.codegen.llvm.rnn as rnn_codegen  # noqa: E402
from kcompiler import keras  # noqa: E402
from kcompiler.ir.graph import GraphBuilder  # noqa: E402
from kcompiler.ir.types import TensorType  # noqa: E402
from kcompiler.keras import backend  # noqa: E402
from kcompiler.keras.tensor import SymbolicTensor  # noqa: E402
from kcompiler.passes.autodiff import gradients  # noqa: E402
from kcompiler.pipeline import lower_graph  # noqa: E402


def timed(fn, reps):
    """(median ms, best ms) of ``reps`` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.min(times))


def build_model(args):
    backend.clear_session()
    backend.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(args.time,), dtype="int32"),
                              keras.layers.Embedding(args.vocab, args.embed), keras.layers.LSTM(args.units)])
    return model


def gradient_graph(model, ids, r):
    """sum(model(ids) * r) and its gradients w.r.t. every weight, as one static graph."""
    b = backend.new_trace_builder(name="lstm_fwd_bwd")
    x = SymbolicTensor(b, b.input("ids", TensorType(ids.shape, "int32")))
    y = model(x)
    total = b.op("sum", b.op("mul", y.node, b.input("r", TensorType(r.shape))), axes=None, keepdims=False)
    grads = gradients(b, total, [b.variable(w) for w in model.weights])
    b.g.graph["outputs"] = [total] + grads
    return b.g


def op_graph(op, arrays, attrs):
    b = GraphBuilder(name=op)
    ids = [b.input(f"x{i}", TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    node = b.add(op, ids, attrs)
    b.g.graph["outputs"] = [b.tuple_item(node, i) for i in range(len(b.type(node)))]
    return b.g


def kernels_alone(model, ids, args):
    """Time the lstm and lstm_grad kernels on the embedded batch, on all cores and on one."""
    rng = np.random.default_rng(1)
    emb, lstm = model.layers
    x = emb(ids).numpy()
    kernel, recurrent, bias = (w.numpy() for w in lstm.weights)
    zeros = np.zeros((args.batch, args.units), np.float32)
    operands = [x, kernel, recurrent, bias, zeros, zeros]
    attrs = {"units": args.units}
    cotangents = [rng.standard_normal((args.batch, args.time, args.units)).astype(np.float32),
                  rng.standard_normal((args.batch, args.units)).astype(np.float32), zeros]
    out = {}
    for threads, min_work in (("all cores", rnn_codegen.PARALLEL_MIN_WORK), ("1 thread", 1 << 62)):
        saved, rnn_codegen.PARALLEL_MIN_WORK = rnn_codegen.PARALLEL_MIN_WORK, min_work
        try:
            for op, arrays in (("lstm", operands), ("lstm_grad", operands + cotangents)):
                compiled, _ = lower_graph(op_graph(op, arrays, attrs))
                feeds = {f"x{i}": a for i, a in enumerate(arrays)}
                out[f"{op} kernel ({threads})"] = timed(lambda: compiled.run(feeds), args.reps)
        finally:
            rnn_codegen.PARALLEL_MIN_WORK = saved
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time", type=int, default=80)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--embed", type=int, default=16)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, size=(args.batch, args.time)).astype(np.int32)
    r = rng.standard_normal((args.batch, args.units)).astype(np.float32)
    model = build_model(args)

    results = {}
    program = kcompiler.compile(model, batch_size=args.batch)
    results["forward"] = timed(lambda: program(ids), args.reps)
    compiled, _ = lower_graph(gradient_graph(model, ids, r))
    feeds = {"ids": ids, "r": r}
    results["forward+backward"] = timed(lambda: compiled.run(feeds), args.reps)
    results.update(kernels_alone(model, ids, args))

    info = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
            "processor": platform.processor() or platform.uname().machine, "cpus": len(os.sched_getaffinity(0)),
            "opt_level": os.environ["KCOMPILER_OPT_LEVEL"],
            "workload": f"Embedding({args.vocab}, {args.embed}) -> LSTM({args.units}), batch {args.batch}, "
                        f"sequence {args.time}"}
    print(f"{info['workload']}; O{info['opt_level']}; {info['cpus']} CPUs; {info['date']}")
    print(f"{'':34s} {'median ms':>10s} {'best ms':>10s}")
    for name, (median, best) in results.items():
        print(f"{name:34s} {median:10.3f} {best:10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results_ms": {k: {"median": m, "best": b} for k, (m, b) in results.items()}},
                      f, indent=2)


if __name__ == "__main__":
    main()
