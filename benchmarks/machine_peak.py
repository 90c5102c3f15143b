"""What this machine can do, measured: the fp32 FMA peak of a generated loop on one and on all
cores, kcompiler's own 1024³ SGEMM, numpy's, a streaming copy, and the cycle counter's rate.

The FMA loop and the cycle counter's rate are measured by kcompiler/codegen/llvm/peak.py.

    python benchmarks/machine_peak.py [quiet-wait-s [quiet-budget-s]]   # prints RESULT <json>
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_gemm import best_time, compile_kernels  # noqa: E402
from benchmarks.common import QuietWaits  # noqa: E402
from kcompiler.codegen.llvm import jit  # noqa: E402
from kcompiler.codegen.llvm.peak import cycle_counter_hz, fma_peak  # noqa: E402


def sgemm(n=1024, reps=10, rounds=3):
    """Best GFLOP/s of kcompiler's kc_sgemm (both cores) and of numpy's matmul at n³."""
    kc_2t, _, _ = compile_kernels()
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    kc = min(best_time(lambda: kc_2t(0, 0, n, n, n, 1.0, pa, n, pb, n, 0.0, pc, n), reps) for _ in range(rounds))
    time.sleep(0.5)  # OpenBLAS's threads spin for a while after a call: let them settle first
    numpy = min(best_time(lambda: a @ b, reps) for _ in range(rounds))
    return {"kcompiler_gflops": 2 * n ** 3 / kc / 1e9, "numpy_gflops": 2 * n ** 3 / numpy / 1e9, "n": n}


def copy_bandwidth(mib=64, reps=10):
    """GB/s of numpy copying ``mib`` MiB (one thread; read + write counted)."""
    a = np.ones(mib << 18, np.float32)
    b = np.empty_like(a)
    t = best_time(lambda: np.copyto(b, a), reps)
    return 2 * a.nbytes / t / 1e9


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def measure(quiet_wait=120.0, quiet_budget=600.0):
    """Everything above, each measurement after waiting (at most ``quiet_wait`` s each,
    ``quiet_budget`` s in all) for a quiet machine; ``loads_before`` records the other
    processes' load, in cores, seen just before."""
    wait = QuietWaits(quiet_wait, quiet_budget)
    import llvmlite
    triple, cpu, _ = jit.host_target_info()
    result, loads = {}, {}
    for name, run in [("fma_peak_1", lambda: fma_peak(1)), ("fma_peak_all", lambda: fma_peak(os.cpu_count() or 1)),
                      ("sgemm", sgemm), ("copy_gbs", copy_bandwidth), ("cycle_hz", cycle_counter_hz)]:
        loads[name] = wait()
        result[name] = run()
    return {"cpu_model": cpu_model(), "llvm_cpu": cpu, "triple": triple, "nproc": os.cpu_count(), **result,
            "loads_before": loads, "numpy": np.__version__, "llvmlite": llvmlite.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


if __name__ == "__main__":
    print("RESULT " + json.dumps(measure(*map(float, sys.argv[1:3]))))
