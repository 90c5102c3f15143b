"""Benchmark the generated convolution kernels (conv2d and its two gradients).

Workload: the seed MNIST CNN's three convolutions at batch 64 (3x3 kernels, 'valid'):
28x28x1 -> 32, 13x13x32 -> 64, 5x5x64 -> 64. Each op is compiled alone into a
one-kernel program at O3 and timed by calling the program's native entry point
(inputs already in place, so only the kernel runs); the best of ``--reps`` calls per
round over ``--rounds`` rounds counts. GFLOP/s counts 2 * B*OH*OW * KH*KW*Cin*Cout
for every op.

PyTorch and TensorFlow, when importable, are timed on the same shapes in the same
run (torch: channels-last conv2d / torch.nn.grad; TensorFlow: the Conv2D,
Conv2DBackpropInput and Conv2DBackpropFilter ops inside tf.function). They are not
in the project's venv; ``--frameworks-python /work/tfenv/bin/python`` times them in a
child process running that interpreter (the child imports numpy and the frameworks
only). Usage::

    python benchmarks/bench_conv.py [--reps 20] [--rounds 3] [--frameworks-python PATH] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

BATCH = 64
# (name, input (h, w, cin), kernel (kh, kw, cin, cout))
CONVS = [
    ("conv1 28x28x1->32", (28, 28, 1), (3, 3, 1, 32)),
    ("conv2 13x13x32->64", (13, 13, 32), (3, 3, 32, 64)),
    ("conv3 5x5x64->64", (5, 5, 64), (3, 3, 64, 64)),
]
OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_kernel")
ATTRS = dict(strides=(1, 1), padding="valid", dilation=(1, 1))


def out_hw(h, w, kh, kw):
    return h - kh + 1, w - kw + 1


def flops(in_hwc, k_shape):
    oh, ow = out_hw(in_hwc[0], in_hwc[1], *k_shape[:2])
    kh, kw, cin, cout = k_shape
    return 2.0 * BATCH * oh * ow * kh * kw * cin * cout


def operands(in_hwc, k_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH,) + tuple(in_hwc)).astype(np.float32)
    k = rng.standard_normal(k_shape).astype(np.float32)
    oh, ow = out_hw(in_hwc[0], in_hwc[1], *k_shape[:2])
    dy = rng.standard_normal((BATCH, oh, ow, k_shape[3])).astype(np.float32)
    return x, k, dy


def best_time(fn, reps, rounds):
    fn()
    best = float("inf")
    for _ in range(rounds):
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


# ---- kcompiler ---------------------------------------------------------------------------

def time_kcompiler(reps, rounds):
    from kcompiler.ir.interpreter_reference import run_reference
    from kcompiler.pipeline import lower_graph
    from op_check import assert_close32, build_op_graph

    results = {}
    for name, in_hwc, k_shape in CONVS:
        x, k, dy = operands(in_hwc, k_shape)
        op_inputs = {"conv2d": ([x, k], ATTRS),
                     "conv2d_backward_input": ([dy, k], dict(ATTRS, input_hw=in_hwc[:2])),
                     "conv2d_backward_kernel": ([x, dy], dict(ATTRS, kernel_shape=k_shape))}
        for op in OPS:
            inputs, attrs = op_inputs[op]
            b, _, outs = build_op_graph(op, inputs, attrs)
            b.g.graph["outputs"] = outs
            feeds = {f"x{i}": a for i, a in enumerate(inputs)}
            t0 = time.perf_counter()
            compiled, _ = lower_graph(b.g, fuse=False)
            compile_s = time.perf_counter() - t0
            got = compiled.run(feeds)  # also leaves the inputs in the staging buffers of its context
            expected, _ = run_reference(b.g, feeds)
            assert_close32(got[0], expected[0], f"{op} on {name}")
            entry, args = compiled._entry, compiled._free[-1].args  # the native step, without Python copies
            t = best_time(lambda: entry(*args), reps, rounds)
            results[(name, op)] = {"ms": t * 1e3, "gflops": flops(in_hwc, k_shape) / t / 1e9,
                                   "compile_s": compile_s}
    return results


# ---- PyTorch / TensorFlow (optional) ----------------------------------------------------------

def time_torch(reps, rounds):
    import torch
    results = {}
    for name, in_hwc, k_shape in CONVS:
        x, k, dy = operands(in_hwc, k_shape)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous()
        dyt = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        x_size = list(xt.shape)
        fns = {"conv2d": lambda: torch.nn.functional.conv2d(xt, kt),
               "conv2d_backward_input": lambda: torch.nn.grad.conv2d_input(x_size, kt, dyt),
               "conv2d_backward_kernel": lambda: torch.nn.grad.conv2d_weight(xt, list(kt.shape), dyt)}
        with torch.no_grad():
            for op, fn in fns.items():
                t = best_time(fn, reps, rounds)
                results[(name, op)] = {"ms": t * 1e3, "gflops": flops(in_hwc, k_shape) / t / 1e9}
    return results


def time_tensorflow(reps, rounds):
    import tensorflow as tf
    results = {}
    strides = [1, 1, 1, 1]
    for name, in_hwc, k_shape in CONVS:
        x, k, dy = (tf.constant(a) for a in operands(in_hwc, k_shape))
        x_size = tf.constant([BATCH, *in_hwc], tf.int32)
        k_size = tf.constant(k_shape, tf.int32)
        fns = {
            "conv2d": tf.function(lambda: tf.raw_ops.Conv2D(input=x, filter=k, strides=strides, padding="VALID")),
            "conv2d_backward_input": tf.function(lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=x_size, filter=k, out_backprop=dy, strides=strides, padding="VALID")),
            "conv2d_backward_kernel": tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=k_size, out_backprop=dy, strides=strides, padding="VALID")),
        }
        for op, fn in fns.items():
            t = best_time(lambda: fn().numpy(), reps, rounds)
            results[(name, op)] = {"ms": t * 1e3, "gflops": flops(in_hwc, k_shape) / t / 1e9}
    return results


def time_frameworks(reps, rounds):
    """{framework label: results} for the frameworks importable in this interpreter."""
    out = {}
    try:
        import torch
        out[f"torch {torch.__version__}"] = time_torch(reps, rounds)
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        out[f"tensorflow {tf.__version__}"] = time_tensorflow(reps, rounds)
    except ImportError:
        pass
    return out


def _encode(results):
    return {label: [[name, op, r] for (name, op), r in res.items()] for label, res in results.items()}


def _decode(data):
    return {label: {(name, op): r for name, op, r in rows} for label, rows in data.items()}


def frameworks_in_child(python, reps, rounds):
    child = subprocess.run([python, os.path.abspath(__file__), "--frameworks-only", "--reps", str(reps),
                            "--rounds", str(rounds)], capture_output=True, text=True)
    if child.returncode != 0:
        print(f"  ({python} failed: {child.stderr.strip().splitlines()[-1:] or child.returncode})")
        return {}
    return _decode(json.loads(child.stdout.strip().splitlines()[-1]))


# ---- report ---------------------------------------------------------------------------------

def print_table(kc, others):
    labels = list(others)
    head = f"{'convolution (batch 64)':<20} {'op':<23} {'kc ms':>8} {'GFLOP/s':>8}"
    for label in labels:
        short = label.split()[0]
        head += f" {short + ' ms':>14} {'GFLOP/s':>8}"
    print(head)
    print("-" * len(head))
    for name, _, _ in CONVS:
        for op in OPS:
            r = kc[(name, op)]
            line = f"{name:<20} {op:<23} {r['ms']:8.3f} {r['gflops']:8.1f}"
            for label in labels:
                o = others[label].get((name, op))
                line += f" {o['ms']:14.3f} {o['gflops']:8.1f}" if o else f" {'n/a':>14} {'':>8}"
            print(line)
    total = sum(r["ms"] for r in kc.values())
    print(f"{'total':<44} {total:8.3f}" + "".join(
        f" {sum(r['ms'] for r in others[label].values()):14.3f} {'':>8}" for label in labels))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opt-level", type=int, default=3)
    ap.add_argument("--frameworks-python", help="also time torch/TensorFlow with this interpreter")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--frameworks-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.frameworks_only:
        print(json.dumps(_encode(time_frameworks(args.reps, args.rounds))))
        return 0

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [root, os.path.join(root, "tests")]
    os.environ["KCOMPILER_OPT_LEVEL"] = str(args.opt_level)
    from kcompiler.codegen.llvm import jit, threads

    kc = time_kcompiler(args.reps, args.rounds)
    others = time_frameworks(args.reps, args.rounds)
    if args.frameworks_python:
        others.update(frameworks_in_child(args.frameworks_python, args.reps, args.rounds))

    _, cpu, _ = jit.host_target_info()
    print(f"conv2d kernels, batch {BATCH}, O{args.opt_level}, {threads.default_nthreads()} threads, "
          f"best of {args.reps} x {args.rounds}; {cpu}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print_table(kc, others)
    print(f"kc compile time (9 one-op programs, O{args.opt_level}, disk cache as found): "
          f"{sum(r['compile_s'] for r in kc.values()):.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kcompiler": _encode({"kc": kc})["kc"], **_encode(others)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
