"""The SGEMM's cache blocking for the CPU it runs on: defaults, or a measured search saved on disk.

The register tile (MR x NR floats in vectors of W) follows the instruction set
(gemm.register_tile). The cache blocking — KC (depth of a packed micro-panel: KC x NR of B
stays in L1), MC (rows of the packed A block, in L2) and NC (columns of the packed B panel) —
depends on the cache sizes and on how the core overlaps loads with multiply-adds, which no
model predicts to a few per cent. So:

* ``kcompiler tune`` (``search()``) measures a few candidate blockings on this machine — one
  coordinate at a time from the current choice, each a single-threaded SGEMM on the product
  shapes of dense and convolution layers, timed in thread CPU time (so other processes'
  load does not count), bounded in time — and saves the fastest in the kernel cache
  directory, keyed by the CPU (``tuning-<key>.json``);
* every process then builds its support library (and so every SGEMM of every model) with the
  saved choice; the support library's cache key includes it, so a new choice recompiles it;
* without a saved choice, or with ``KCOMPILER_TUNING=off`` (reproducible builds, tests),
  the defaults below: measured best on the 2-core Zen 2 (AVX2, 32 KiB L1d, 512 KiB L2) and
  AVX-512 (48 KiB L1d, 1 MiB L2) machines this project runs on.

A first use does not search: the search compiles a dozen SGEMM variants (seconds), which
would cost more than the whole cold start it could speed up. The choice and where it came
from are in every dump (the scheduled stage's notes).
"""
import json
import os
import time
from dataclasses import dataclass

DEFAULT_KC, DEFAULT_MC, DEFAULT_NC = 256, 144, 512
# what a saved choice may hold (a file outside these is ignored)
LIMITS = {"kc": (16, 2048), "mc": (6, 4096), "nc": (16, 16384)}
# the search's candidates along each coordinate
CANDIDATES = {"kc": (128, 192, 256, 320, 384), "mc": (72, 96, 144, 192, 288), "nc": (256, 512, 1024, 2048)}
# products timed per candidate: (M, N, K) of a wide dense layer's forward and weight gradient
# and of a convolution's implicit GEMM
SEARCH_SHAPES = ((256, 1024, 784), (784, 1024, 256), (4096, 64, 288))


@dataclass(frozen=True)
class Blocking:
    kc: int
    mc: int
    nc: int
    source: str  # where the choice came from, for the dump

    def describe(self):
        from .gemm import register_tile
        vw, mr, nr, _ = register_tile()
        isa = "AVX-512" if vw == 16 else "AVX2"
        return f"cpu SGEMM: {mr}x{nr} register tile ({isa}), KC {self.kc}, MC {self.mc}, NC {self.nc} ({self.source})"


DEFAULT = Blocking(DEFAULT_KC, DEFAULT_MC, DEFAULT_NC,
                   "defaults; `kcompiler tune` measures this machine's")


def cpu_key():
    """The CPU a saved choice belongs to: LLVM's host CPU name and feature string."""
    import hashlib

    from .jit import host_target_info
    triple, cpu, features = host_target_info()
    return f"{cpu}-{hashlib.sha256(f'{triple} {features}'.encode()).hexdigest()[:12]}"


def saved_path():
    from .cache import cache_dir
    return cache_dir() / f"tuning-{cpu_key()}.json"


_current = None


def current():
    """The blocking this process compiles its SGEMMs with (read once)."""
    global _current
    if _current is None:
        _current = _load()
    return _current


def _load():
    if os.environ.get("KCOMPILER_TUNING", "").lower() in ("off", "0", "default"):
        return Blocking(DEFAULT_KC, DEFAULT_MC, DEFAULT_NC, "defaults: KCOMPILER_TUNING=off")
    path = saved_path()
    try:
        saved = json.loads(path.read_text())
        values = {k: int(saved[k]) for k in LIMITS}
    except FileNotFoundError:
        return DEFAULT
    except (OSError, ValueError, KeyError, TypeError) as e:
        import warnings
        warnings.warn(f"kcompiler: ignoring the unreadable tuning file {path} ({e}); using the defaults")
        return DEFAULT
    if not all(lo <= values[k] <= hi for k, (lo, hi) in LIMITS.items()):
        import warnings
        warnings.warn(f"kcompiler: ignoring the tuning file {path}: values outside {LIMITS}; using the defaults")
        return DEFAULT
    return Blocking(**values, source=f"measured {saved.get('date', '?')}, {path.name}")


# a candidate replaces the current choice only when it is this much faster in the same batch
# (timings on a shared machine wander by a few per cent)
MIN_GAIN = 1.03


def search(budget_s=20.0, log=print, opt_level=3):
    """Measure candidate blockings (coordinate descent from the defaults over KC, MC, NC), save
    the fastest, and return (its Blocking, {candidate: GFLOP/s})."""
    import llvmlite.ir as ir
    import numpy as np

    from . import gemm
    from .jit import compile_ir

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    operands = [(rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32),
                 np.zeros((m, n), np.float32)) for m, n, k in SEARCH_SHAPES]

    def measure(candidates):
        module = ir.Module(name="kcompiler_tuning")
        for i, (kc, mc, nc) in enumerate(candidates):
            gemm.emit_gemm(module, f"g{i}", nthreads=1, kc=kc, mc=mc, nc=nc)
        library = compile_ir(str(module), opt_level=opt_level, name="kcompiler_tuning")
        fns = [library.function(f"g{i}", None, *gemm.gemm_ctypes_argtypes()) for i in range(len(candidates))]
        times = [[] for _ in candidates]
        for _ in range(5):  # rounds alternate the candidates so that drift falls on all
            for i, f in enumerate(fns):
                total = 0.0
                for (a, b, c), (m, n, k) in zip(operands, SEARCH_SHAPES):
                    t = time.thread_time()
                    f(0, 0, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n, 0.0, c.ctypes.data, n)
                    total += time.thread_time() - t
                times[i].append(total)
        flops = sum(2 * m * n * k for m, n, k in SEARCH_SHAPES)
        return {cand: flops / float(np.median(t)) / 1e9 for cand, t in zip(candidates, times)}

    best = (DEFAULT_KC, DEFAULT_MC, DEFAULT_NC)
    results = {}
    for axis, name in enumerate(("kc", "mc", "nc")):
        if time.perf_counter() - start > budget_s:
            log(f"tuning: time budget spent before {name}")
            break
        candidates = list(dict.fromkeys([best] + [best[:axis] + (v,) + best[axis + 1:] for v in CANDIDATES[name]]))
        results.update(measure(candidates))
        winner = max(candidates, key=results.get)
        if results[winner] >= MIN_GAIN * results[best]:
            best = winner
        log(f"tuning {name}: " + ", ".join(f"{c[axis]} {results[c]:.1f}" for c in candidates) + f" GFLOP/s -> {best[axis]}")
    chosen = dict(zip(("kc", "mc", "nc"), best))
    path = saved_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**chosen, "date": time.strftime("%Y-%m-%d"),
                               "gflops": {" ".join(map(str, c)): round(v, 2) for c, v in results.items()},
                               "default_gflops": round(results.get((DEFAULT_KC, DEFAULT_MC, DEFAULT_NC), 0.0), 2)},
                              indent=1))
    os.replace(tmp, path)
    global _current
    _current = None
    return current(), results
