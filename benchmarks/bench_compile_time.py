"""Compile time against depth: a residual-free deep CNN, Conv2D(16, 3, 'same', relu) repeated
N times on 16x16x3 images, then GlobalAveragePooling2D and Dense(10); Adam, sparse CE from
logits; the training step at batch 8, KCOMPILER_OPT_LEVEL=3.

For each N, a fresh process with an empty kernel cache builds the support library (timed
on its own: the same for every model) and then compiles the training step
(``kcompiler.compile(model, training=True, batch_size=8)``, "cold"); a second fresh process
on the now warm cache times the same compile again ("warm"). ``--train-speed`` instead times
W2's train step (median ms) in this process.

    python benchmarks/bench_compile_time.py [--depths 5 10 20 40] [--train-speed]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import kcompiler
from kcompiler import keras
from kcompiler.keras import layers
from kcompiler.codegen.llvm.support_library import ensure_support_library
from kcompiler.codegen.llvm.cache import cache_stats
t_import = time.perf_counter() - t0
depth = int(sys.argv[1])
t0 = time.perf_counter()
ensure_support_library()
t_support = time.perf_counter() - t0
model = keras.Sequential([keras.Input((16, 16, 3))]
                         + [layers.Conv2D(16, 3, padding="same", activation="relu") for _ in range(depth)]
                         + [layers.GlobalAveragePooling2D(), layers.Dense(10)])
model.compile(optimizer=keras.optimizers.Adam(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
t0 = time.perf_counter()
program = kcompiler.compile(model, training=True, batch_size=8)
t_step = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "support_s": t_support, "step_s": t_step,
                  "kernels": len(program.kernels), "stats": cache_stats()}))
"""


def _child(depth, cache):
    env = dict(os.environ, KCOMPILER_OPT_LEVEL="3", KCOMPILER_CACHE_DIR=cache, PYTHONPATH=ROOT)
    env.pop("KCOMPILER_NO_CACHE", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(depth)], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def measure_depths(depths):
    """Per depth: a fresh process on an empty kernel cache ("cold"), then one on the cache it
    filled ("warm"); rows of depth, kernels, units compiled, and seconds."""
    rows = []
    for depth in depths:
        with tempfile.TemporaryDirectory() as cache:
            cold = _child(depth, cache)
            warm = _child(depth, cache)
        units = cold["stats"]["misses"] - 1  # less the support library
        rows.append({"depth": depth, "kernels": cold["kernels"], "units": units, "cold_s": cold["step_s"],
                     "support_s": cold["support_s"], "warm_s": warm["step_s"]})
    return rows


def depth_table(rows):
    """``measure_depths``' rows as a markdown table."""
    lines = ["| convolutions | kernels | units compiled | cold step compile s | s per convolution "
             "| support library s | warm step compile s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['depth']} | {r['kernels']} | {r['units']} | {r['cold_s']:.2f} | {r['cold_s'] / r['depth']:.3f} "
              f"| {r['support_s']:.2f} | {r['warm_s']:.3f} |" for r in rows]
    return lines


def per_convolution_growth(rows, deep=40, shallow=10):
    """Compile seconds per convolution at ``deep`` layers over that at ``shallow`` (None without both)."""
    per = {r["depth"]: r["cold_s"] / r["depth"] for r in rows}
    return per[deep] / per[shallow] if deep in per and shallow in per else None


def train_speed():
    import numpy as np  # noqa: F401
    import kcompiler
    from benchmarks.common import timeit
    from benchmarks.workloads import WORKLOADS
    w = WORKLOADS["W2"]
    program = kcompiler.compile(w.build(), training=True, batch_size=w.batch_size)
    x, y = w.data()
    ms = timeit(lambda: program.train_step(x, y), repeat=15) * 1e3
    print(f"W2 train step: {ms:.2f} ms (median)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--train-speed", action="store_true", help="time W2's train step instead")
    args = parser.parse_args()
    if args.train_speed:
        train_speed()
    else:
        print("\n".join(depth_table(measure_depths(args.depths))))


if __name__ == "__main__":
    main()
