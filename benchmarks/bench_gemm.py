"""Benchmark the generated SGEMM (kc_sgemm) against numpy's float32 matmul.

One run measures, at the same size (default 1024 x 1024 @ 1024 x 1024):

* numpy float32 ``A @ B`` in this process, with the environment as it is
  (OpenBLAS threads as numpy chose them; with 1 OpenBLAS thread as well);
* numpy in a child process with ``OPENBLAS_CORETYPE`` removed from the
  environment (this machine sets ``OPENBLAS_CORETYPE=Haswell``, which makes
  OpenBLAS use its AVX2 kernels on an AVX-512 CPU);
* ``kc_sgemm`` compiled at O3, with 1 thread and with 2 threads.

Each subject is timed best-of-``--reps`` per round over ``--rounds`` interleaved
rounds; the best time of all rounds counts. OpenBLAS worker threads keep
spinning for a while after a call and would steal the second core from the
next subject, so the script sleeps ``--settle`` seconds after every numpy
block. Usage::

    python benchmarks/bench_gemm.py [--size 1024] [--reps 15] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


# ----------------------------------------------------------------- BLAS info
def _openblas_lib():
    """The OpenBLAS shared library numpy loaded (via /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
    except OSError:
        return None, None
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                return lib, (prefix, suffix)
    return None, None


def blas_info() -> dict:
    """Which BLAS numpy uses and with how many threads (threadpoolctl if
    installed, else OpenBLAS's own query functions)."""
    np.ones((8, 8), np.float32) @ np.ones((8, 8), np.float32)  # make sure it is loaded
    info: dict = {"numpy": np.__version__}
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        info["source"] = f"threadpoolctl {threadpoolctl.__version__}"
        info["pools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer")}
            for p in pools
        ]
        return info
    except ImportError:
        pass
    lib, names = _openblas_lib()
    if lib is None:
        info["source"] = "numpy.show_config"
        try:
            cfg = np.show_config(mode="dicts")
            info["blas"] = cfg.get("Build Dependencies", {}).get("blas", {})
        except Exception:  # pragma: no cover
            pass
        return info
    prefix, suffix = names
    get_cfg = getattr(lib, f"{prefix}get_config{suffix}")
    get_cfg.restype = ctypes.c_char_p
    get_core = getattr(lib, f"{prefix}get_corename{suffix}")
    get_core.restype = ctypes.c_char_p
    info["source"] = "OpenBLAS API via ctypes (threadpoolctl not installed)"
    info["config"] = get_cfg().decode()
    info["corename"] = get_core().decode()
    info["num_threads"] = int(getattr(lib, f"{prefix}get_num_threads{suffix}")())
    return info


def set_openblas_threads(n: int) -> bool:
    lib, names = _openblas_lib()
    if lib is None:
        return False
    prefix, suffix = names
    fn = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int]
    fn(int(n))
    return True


# ----------------------------------------------------------------- timing
def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gflops(n: int, t: float) -> float:
    return 2.0 * n**3 / t / 1e9


def numpy_only(n: int, reps: int, rounds: int, settle: float) -> dict:
    rng = np.random.default_rng(0)
    A = rng.random((n, n), dtype=np.float32)
    B = rng.random((n, n), dtype=np.float32)
    A @ B
    info = blas_info()
    t = t1 = float("inf")
    for _ in range(rounds):
        t = min(t, best_time(lambda: A @ B, reps))
        if set_openblas_threads(1):
            t1 = min(t1, best_time(lambda: A @ B, reps))
            set_openblas_threads(info.get("num_threads") or (os.cpu_count() or 1))
        time.sleep(settle)
    return {"gflops": gflops(n, t), "gflops_1thread": gflops(n, t1) if t1 < float("inf") else None,
            "seconds": t, "blas": info, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def compile_kernels():
    import llvmlite.ir as ir

    from kcompiler.codegen.llvm import gemm as G
    from kcompiler.codegen.llvm import jit as T

    mod = ir.Module(name="bench_gemm")
    G.emit_gemm(mod, "kc_sgemm", nthreads=2)
    G.emit_gemm(mod, "kc_sgemm_1t", nthreads=1)
    t0 = time.perf_counter()
    cm = T.compile_ir(str(mod), opt_level=3, name="bench_gemm")
    dt = time.perf_counter() - t0
    at = G.gemm_ctypes_argtypes()
    return (cm.function("kc_sgemm", None, *at), cm.function("kc_sgemm_1t", None, *at),
            {"compile_seconds": dt, "from_cache": cm.from_cache, "opt_level": 3})


def sweep(sizes, f1, f2, args) -> list:
    """GFLOP/s of numpy (as is), kc 1 thread and kc 2 threads per square size."""
    rows = []
    print(f"  {'n':>6} {'numpy':>8} {'kc 1t':>8} {'kc 2t':>8}  GFLOP/s (best of {args.reps} x {args.rounds})")
    for n in sizes:
        rng = np.random.default_rng(n)
        A = rng.random((n, n), dtype=np.float32)
        B = rng.random((n, n), dtype=np.float32)
        C = np.empty((n, n), np.float32)
        a, b, c = A.ctypes.data, B.ctypes.data, C.ctypes.data
        reps = max(args.reps, int(2e8 / n**3))  # small sizes: more repetitions
        t = {"numpy": float("inf"), "kc_1t": float("inf"), "kc_2t": float("inf")}
        for _ in range(args.rounds):
            t["kc_1t"] = min(t["kc_1t"], best_time(lambda: f1(0, 0, n, n, n, 1.0, a, n, b, n, 0.0, c, n), reps))
            t["kc_2t"] = min(t["kc_2t"], best_time(lambda: f2(0, 0, n, n, n, 1.0, a, n, b, n, 0.0, c, n), reps))
            t["numpy"] = min(t["numpy"], best_time(lambda: A @ B, reps))
            time.sleep(args.settle)
        row = {"n": n, **{k: gflops(n, v) for k, v in t.items()}}
        rows.append(row)
        print(f"  {n:>6} {row['numpy']:8.1f} {row['kc_1t']:8.1f} {row['kc_2t']:8.1f}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to sleep after numpy so OpenBLAS's spinning threads go idle")
    ap.add_argument("--sweep", default="",
                    help="comma-separated extra square sizes to time (numpy as is, kc 1 and 2 threads)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--numpy-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = args.size

    if args.numpy_only:
        print(json.dumps(numpy_only(n, args.reps, args.rounds, args.settle)))
        return 0

    from kcompiler.codegen.llvm import jit as T

    f2, f1, cinfo = compile_kernels()
    rng = np.random.default_rng(0)
    A = rng.random((n, n), dtype=np.float32)
    B = rng.random((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    a, b, c = A.ctypes.data, B.ctypes.data, C.ctypes.data

    def kc2():
        f2(0, 0, n, n, n, 1.0, a, n, b, n, 0.0, c, n)

    def kc1():
        f1(0, 0, n, n, n, 1.0, a, n, b, n, 0.0, c, n)

    # correctness at this size
    kc2()
    ref = A.astype(np.float64) @ B.astype(np.float64)
    err2 = float(np.max(np.abs(C - ref)) / np.max(np.abs(ref)))
    kc1()
    err1 = float(np.max(np.abs(C - ref)) / np.max(np.abs(ref)))

    info_np = blas_info()
    np_threads = info_np.get("num_threads")
    best = {"numpy": float("inf"), "numpy_1t": float("inf"), "kc_1t": float("inf"), "kc_2t": float("inf")}
    A @ B
    time.sleep(args.settle)
    for _ in range(args.rounds):
        best["kc_1t"] = min(best["kc_1t"], best_time(kc1, args.reps))
        best["kc_2t"] = min(best["kc_2t"], best_time(kc2, args.reps))
        best["numpy"] = min(best["numpy"], best_time(lambda: A @ B, args.reps))
        if set_openblas_threads(1):
            best["numpy_1t"] = min(best["numpy_1t"], best_time(lambda: A @ B, args.reps))
            set_openblas_threads(np_threads or (os.cpu_count() or 1))
        time.sleep(args.settle)

    # numpy with OPENBLAS_CORETYPE removed (child process: OpenBLAS reads it at load)
    env = dict(os.environ)
    removed = env.pop("OPENBLAS_CORETYPE", None)
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--numpy-only", "--size", str(n),
         "--reps", str(args.reps), "--rounds", str(args.rounds), "--settle", str(args.settle)],
        env=env, capture_output=True, text=True, check=True,
    )
    unset = json.loads(child.stdout.strip().splitlines()[-1])

    g = {k: (gflops(n, v) if v != float("inf") else None) for k, v in best.items()}
    triple, cpu, _ = T.host_target_info()
    res = {
        "date": _dt.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpu": cpu, "triple": triple,
                    "ncpu": os.cpu_count(), "python": platform.python_version()},
        "size": n, "reps": args.reps, "rounds": args.rounds,
        "kc_compile": cinfo,
        "kc_rel_error": {"1t": err1, "2t": err2},
        "numpy_blas_as_is": info_np,
        "env": {"OPENBLAS_CORETYPE": removed, "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")},
        "gflops": {
            "numpy_as_is": g["numpy"],
            "numpy_as_is_1thread": g["numpy_1t"],
            "numpy_coretype_unset": unset["gflops"],
            "numpy_coretype_unset_1thread": unset["gflops_1thread"],
            "kc_sgemm_1thread": g["kc_1t"],
            "kc_sgemm_2threads": g["kc_2t"],
        },
        "numpy_blas_coretype_unset": unset["blas"],
    }
    gg = res["gflops"]
    res["ratios"] = {
        "kc_2t / numpy_as_is": gg["kc_sgemm_2threads"] / gg["numpy_as_is"],
        "kc_2t / numpy_coretype_unset": gg["kc_sgemm_2threads"] / gg["numpy_coretype_unset"],
        "kc_2t / kc_1t": gg["kc_sgemm_2threads"] / gg["kc_sgemm_1thread"],
    }
    if gg["numpy_as_is_1thread"]:
        res["ratios"]["kc_1t / numpy_as_is_1thread"] = gg["kc_sgemm_1thread"] / gg["numpy_as_is_1thread"]
    if gg["numpy_coretype_unset_1thread"]:
        res["ratios"]["kc_1t / numpy_coretype_unset_1thread"] = (
            gg["kc_sgemm_1thread"] / gg["numpy_coretype_unset_1thread"])

    print(f"SGEMM {n}x{n} @ {n}x{n}, best of {args.reps} x {args.rounds} rounds, {res['date']}")
    print(f"  machine: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"  numpy {np.__version__}: {json.dumps(info_np)}")
    print(f"  numpy (OPENBLAS_CORETYPE unset): {json.dumps(unset['blas'])}")
    print(f"  kc_sgemm: O3, compile {cinfo['compile_seconds']:.3f} s "
          f"({'cache hit' if cinfo['from_cache'] else 'compiled'}), rel. error 1t {err1:.1e}, 2t {err2:.1e}")
    width = max(map(len, gg))
    for k, v in gg.items():
        print(f"  {k:<{width}}  {v:8.1f} GFLOP/s" if v else f"  {k:<{width}}       n/a")
    for k, v in res["ratios"].items():
        print(f"  ratio {k}: {v:.2f}")
    if args.sweep:
        res["sweep"] = sweep([int(x) for x in args.sweep.split(",") if x], f1, f2, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
