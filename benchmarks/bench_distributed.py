"""Data-parallel training over MPI on one machine (issue 13): what the ranks cost, not a speed-up.

For the MNIST CNN (W2, global batch 64) and the wide MLP (W5, global batch 256) of DESIGN §6:
one training step (``model_steps(model).train``, what fit calls per batch) in one process with
2 threads against 2 ranks (``mpirun -n 2 --bind-to core``: one core, so one kernel thread, each)
running their halves of the batch with the all-reduce between; and the all-reduce alone on the
step's gradient region (the same bytes, in place), per step. Then an all-reduce sweep over
message sizes (latency and bandwidth of this MPI on loopback: docs/distributed.md's model).

Run: python benchmarks/bench_distributed.py [--quick]   (needs the `distributed` extra; the
script launches the 2-rank part itself with the mpirun of its own Python's environment).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "3")

from benchmarks.common import machine  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402

CASES = [("W2", 64), ("W5", 256)]
SWEEP_BYTES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20]


def _median_time(fn, number, repeat, warmup=2):
    """Median seconds per call over ``repeat`` rounds of exactly ``number`` calls (fixed counts:
    every rank must make the same collective calls)."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return float(np.median(rounds))


def _step(name, batch):
    from kcompiler import keras
    from kcompiler.keras.steps import model_steps
    keras.utils.set_random_seed(0)
    workload = WORKLOADS[name]
    model = workload.build()
    x, y = workload.data(batch_size=batch)
    steps = model_steps(model)
    return steps, (lambda: steps.train([x], y, None))


def single(quick):
    """One process (its CPUs: 2 threads here): seconds per step of each case."""
    repeat, number = (3, 5) if quick else (7, 20)
    return {name: _median_time(_step(name, batch)[1], number, repeat) for name, batch in CASES}


def ranks(quick):
    """Run on each rank of the job; rank 0 prints the results as JSON."""
    from kcompiler import keras
    from kcompiler.distribute.mpi import mpi
    strategy = keras.distribution.DataParallel()
    keras.distribution.set_distribution(strategy)
    comm = strategy.comm
    repeat, number = (3, 5) if quick else (7, 20)
    out = {"steps": {}, "allreduce_per_step": {}, "region_bytes": {}, "sweep": {}}
    for name, batch in CASES:
        steps, step = _step(name, batch)
        out["steps"][name] = _median_time(step, number, repeat)
        region = steps.train_program._compiled.collective["bytes"]
        buf = np.zeros(region // 4, np.float32)
        out["region_bytes"][name] = region
        out["allreduce_per_step"][name] = _median_time(
            lambda: comm.Allreduce(mpi().IN_PLACE, buf, op=mpi().SUM), number * 5, repeat)
    for nbytes in SWEEP_BYTES:
        buf = np.zeros(nbytes // 4, np.float32)
        out["sweep"][nbytes] = _median_time(lambda: comm.Allreduce(mpi().IN_PLACE, buf, op=mpi().SUM),
                                            20 if quick else 100, repeat)
    if comm.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a rough look)")
    parser.add_argument("--ranks", action="store_true", help=argparse.SUPPRESS)  # the mpirun part
    args = parser.parse_args()
    if args.ranks:
        ranks(args.quick)
        return
    one = single(args.quick)
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    cmd = [mpirun, "--allow-run-as-root", "-n", "2", "--bind-to", "core", sys.executable, os.path.abspath(__file__),
           "--ranks"] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"the 2-rank run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    two = json.loads(line[len("RESULT "):])
    print(f"# {machine()}, KCOMPILER_OPT_LEVEL={os.environ['KCOMPILER_OPT_LEVEL']}")
    print("| workload (global batch) | 1 process x 2 threads | 2 ranks x 1 thread | all-reduce per step "
          "(gradient region) | all-reduce share of the 2-rank step |")
    print("|---|---|---|---|---|")
    for name, batch in CASES:
        t1, t2, ar = one[name], two["steps"][name], two["allreduce_per_step"][name]
        print(f"| {name} ({batch}) | {t1 * 1e3:.2f} ms | {t2 * 1e3:.2f} ms | {ar * 1e3:.3f} ms "
              f"({two['region_bytes'][name] / 2 ** 20:.2f} MiB) | {ar / t2:.0%} |")
    print("\nall-reduce (sum, float32, in place) over 2 ranks on this machine:")
    print("| bytes | time | algorithm bandwidth (bytes / time) |")
    print("|---|---|---|")
    for nbytes, t in two["sweep"].items():
        print(f"| {int(nbytes):,} | {t * 1e6:.1f} us | {int(nbytes) / t / 1e9:.2f} GB/s |")


if __name__ == "__main__":
    main()
