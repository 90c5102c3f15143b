"""Speed of two commits of this repository, measured in the same run: W1–W6 train step and
inference, and the cold start with an empty kernel cache.

    python benchmarks/compare_commits.py [--old c675b33] [--new d1bdb19] [--rounds 7]

Both commits are checked out as temporary git worktrees (``git worktree add --detach``);
every measurement runs in a fresh process of this Python with ``PYTHONPATH`` at one worktree.
The workloads come from the NEW worktree's ``benchmarks/workloads.py`` (loaded by file path:
it uses only the public ``kcompiler.keras`` API, so it builds the same models on the OLD
commit too), the timing helper from its ``benchmarks/common.py``.

The virtual environment installs kcompiler editable from the main checkout, with a finder on
``sys.meta_path`` that maps ``kcompiler.runtime`` to the checkout's ``runtime/``. Each
measurement process drops those finders before importing kcompiler, the worktrees get a
``kcompiler/runtime -> ../runtime`` link, and the process checks that ``kcompiler`` and
``kcompiler.runtime`` come from the intended worktree.

Method (docs/benchmarks.md, NOTES-bench): ``KCOMPILER_OPT_LEVEL=3``; one persistent kernel
cache per version, warmed by an untimed first process; rounds alternate the versions
(OLD NEW, NEW OLD, ...) so that drift falls on both; before each process the script waits
(bounded) until the rest of the machine uses under ~0.2 cores, and records the load other
processes put on the machine while it ran. Per process: the median of ``timeit``'s rounds;
per workload: the median over the processes. Ratio = old time / new time (>= 1: new is
faster). Cold start: a whole new process with an empty cache until the end of the first W2
train step. Workloads whose ratio is below ``--profile-below`` are profiled afterwards
(``KCOMPILER_PROFILE=1``: cycles per kernel per step, both versions).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
sys.path.insert(0, ROOT)

from benchmarks.common import HZ, cpu_busy, wait_quiet  # noqa: E402

# Runs in the measurement process: ``-c CHILD <worktree> <workloads.py> <common.py> <mode> <workload> [n]``.
CHILD = r'''
import sys, os, time, json
start = time.perf_counter()
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
for m in [m for m in sys.modules if m == "kcompiler" or m.startswith("kcompiler.")]:
    del sys.modules[m]
worktree, workloads_py, common_py, mode, name = sys.argv[1:6]
import importlib.util
import kcompiler, kcompiler.runtime
for mod in (kcompiler, kcompiler.runtime):
    if not os.path.realpath(mod.__file__).startswith(os.path.realpath(worktree) + os.sep):
        raise SystemExit(f"{mod.__name__} imported from {mod.__file__}, not from {worktree}")

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

workloads = load("kc_bench_workloads", workloads_py)
W = {**workloads.WORKLOADS, **getattr(workloads, "DEEP_WORKLOADS", {})}[name]
timeit = load("kc_bench_common", common_py).timeit
result = {"kcompiler": kcompiler.__file__, "runtime": kcompiler.runtime.__file__}
if mode == "cold":
    model = W.build()
    x, y = W.data()
    kcompiler.compile(model, training=True, batch_size=W.batch_size).train_step(x, y)
    result["cold_s"] = time.perf_counter() - start
elif mode == "steady":
    model = W.build()
    x, y = W.data()
    infer = kcompiler.compile(model, batch_size=W.batch_size)
    result["predict_s"] = timeit(lambda: infer.predict(x), warmup=3, repeat=9)
    train = kcompiler.compile(model, training=True, batch_size=W.batch_size)
    result["train_s"] = timeit(lambda: train.train_step(x, y), warmup=3, repeat=9)
elif mode == "profile":
    steps = int(sys.argv[6])
    # an older commit may predate Program.profile()
    cycles = lambda p: p.profile() if hasattr(p, "profile") else p._compiled.profile()  # noqa: E731
    model = W.build()
    x, y = W.data()
    infer = kcompiler.compile(model, batch_size=W.batch_size)
    for _ in range(steps):
        infer.predict(x)
    result["predict"] = [(k, c / steps) for k, c in cycles(infer)]
    train = kcompiler.compile(model, training=True, batch_size=W.batch_size)
    for _ in range(steps):
        train.train_step(x, y)
    result["train"] = [(k, c / steps) for k, c in cycles(train)]
print("RESULT " + json.dumps(result))
'''


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()


class Version:
    def __init__(self, label, commit, tmp, workloads_py, common_py):
        self.label, self.commit = label, commit
        self.worktree = os.path.join(tmp, label)
        git("worktree", "add", "--detach", self.worktree, commit)
        link = os.path.join(self.worktree, "kcompiler", "runtime")
        if not os.path.exists(link):
            os.symlink(os.path.join("..", "runtime"), link)
        self.cache = os.path.join(tmp, f"cache-{label}")
        os.mkdir(self.cache, 0o700)
        self.workloads_py, self.common_py = workloads_py, common_py
        self.tmp = tmp

    def env(self, cache, profile=False):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KCOMPILER_") and k != "PYTHONDONTWRITEBYTECODE"}  # as users run: .pyc cached
        env.update(PYTHONPATH=self.worktree, KCOMPILER_OPT_LEVEL="3", KCOMPILER_CACHE_DIR=cache)
        if profile:
            env["KCOMPILER_PROFILE"] = "1"
        return env

    def run(self, mode, workload, *extra, cache=None, profile=False):
        """Runs one measurement process; returns (its result dict, wall seconds, other load in cores)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        b0 = cpu_busy()
        t0 = time.perf_counter()
        proc = subprocess.run([PYTHON, "-c", CHILD, self.worktree, self.workloads_py, self.common_py, mode,
                               workload, *map(str, extra)], cwd=self.tmp, capture_output=True, text=True,
                              env=self.env(cache or self.cache, profile))
        wall = time.perf_counter() - t0
        busy = (cpu_busy() - b0) / HZ
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {mode} {workload} failed:\n{proc.stdout}\n{proc.stderr}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):]), wall, max(0.0, busy - own) / wall


def fmt_time(s):
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def log(*args):
    print(*args, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="c675b33")
    ap.add_argument("--new", default="d1bdb19")
    ap.add_argument("--rounds", type=int, default=7, help="processes per version per workload")
    ap.add_argument("--cold-rounds", type=int, default=3, help="0: no cold start")
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6", help="also R20 (DEEP_WORKLOADS)")
    ap.add_argument("--profile-below", type=float, default=0.95,
                    help="profile workloads whose train or predict ratio is below this")
    ap.add_argument("--profile-steps", type=int, default=50)
    ap.add_argument("--profile-rounds", type=int, default=3, help="profiling processes per version")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="max seconds to wait for a quiet machine")
    ap.add_argument("--max-other-load", type=float, default=0.3,
                    help="redo a measurement during which other processes used more cores than this")
    ap.add_argument("--retries", type=int, default=2)
    args = ap.parse_args()
    names = args.workloads.split(",")

    tmp = tempfile.mkdtemp(prefix="kc-compare-")
    versions = []
    try:
        old_hash, new_hash = git("rev-parse", "--short", args.old), git("rev-parse", "--short", args.new)
        new_dir = os.path.join(tmp, "new")
        workloads_py = os.path.join(new_dir, "benchmarks", "workloads.py")
        common_py = os.path.join(new_dir, "benchmarks", "common.py")
        old = Version("old", args.old, tmp, workloads_py, common_py)
        new = Version("new", args.new, tmp, workloads_py, common_py)
        versions = [old, new]
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        log(f"machine: {cpu}, nproc {os.cpu_count()}; python {PYTHON}")
        log(f"old = {old_hash}, new = {new_hash}; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")

        # warm each version's cache (and check where kcompiler comes from)
        for name in names:
            for v in versions:
                res, wall, other = v.run("steady", name)
                if name == names[0]:
                    log(f"{v.label}: kcompiler from {res['kcompiler']}, kcompiler.runtime from {res['runtime']}")
                log(f"warm-up {name} {v.label}: {wall:.1f} s")

        samples = {(n, v.label): {"train": [], "predict": []} for n in names for v in versions}
        loads = []
        for r in range(args.rounds):
            order = versions if r % 2 == 0 else versions[::-1]
            for name in names:
                for v in order:
                    for attempt in range(args.retries + 1):  # a process that other work disturbed is redone
                        waited = wait_quiet(args.quiet_wait)
                        res, wall, other = v.run("steady", name)
                        if other <= args.max_other_load:
                            break
                        log(f"round {r + 1} {name} {v.label}: other load {other:.2f} cores during the run, "
                            f"{'redone' if attempt < args.retries else 'kept (flagged)'}")
                    samples[name, v.label]["train"].append(res["train_s"])
                    samples[name, v.label]["predict"].append(res["predict_s"])
                    loads.append(other)
                    log(f"round {r + 1} {name} {v.label}: train {fmt_time(res['train_s'])}, predict "
                        f"{fmt_time(res['predict_s'])} (load before {waited:.2f}, other load during {other:.2f} cores)")

        cold = {"old": [], "new": []}
        for r in range(args.cold_rounds):
            for v in (versions if r % 2 == 0 else versions[::-1]):
                for attempt in range(args.retries + 1):
                    cache = tempfile.mkdtemp(prefix=f"cold-{v.label}-", dir=tmp)  # empty, mode 0o700
                    waited = wait_quiet(args.quiet_wait)
                    res, wall, other = v.run("cold", "W2", cache=cache)
                    shutil.rmtree(cache, ignore_errors=True)
                    if other <= args.max_other_load:
                        break
                    log(f"cold round {r + 1} {v.label}: {wall:.2f} s with other load {other:.2f} cores, "
                        f"{'redone' if attempt < args.retries else 'kept (flagged)'}")
                cold[v.label].append(wall)
                loads.append(other)
                log(f"cold round {r + 1} {v.label}: {wall:.2f} s (in-process {res['cold_s']:.2f} s; "
                    f"load before {waited:.2f}, other load during {other:.2f} cores)")

        rows, below = [], []
        for name in names:
            cells = []
            for kind in ("train", "predict"):
                o = statistics.median(samples[name, "old"][kind])
                n = statistics.median(samples[name, "new"][kind])
                fastest = min(samples[name, "old"][kind]) / min(samples[name, "new"][kind])
                pairs = [a / b for a, b in zip(samples[name, "old"][kind], samples[name, "new"][kind])]
                cells.append((o, n, o / n, fastest, statistics.median(pairs)))
                if o / n < args.profile_below:
                    below.append((name, kind))
            rows.append((name, cells))

        table = ["| workload | train step, old | train step, new | old/new (fastest, per round) | predict, old | predict, new | old/new (fastest, per round) |",
                 "|---|---|---|---|---|---|---|"]
        for name, ((to, tn, tr, tf, tp), (po, pn, pr, pf, pp)) in rows:
            table.append(f"| {name} (batch {batch_of(name, workloads_py)}) | {fmt_time(to)} | {fmt_time(tn)} | "
                         f"**{tr:.2f}×** ({tf:.2f}×, {tp:.2f}×) | {fmt_time(po)} | {fmt_time(pn)} | "
                         f"**{pr:.2f}×** ({pf:.2f}×, {pp:.2f}×) |")
            for kind in ("train", "predict"):
                log(f"{name} {kind} per round (old, new): " + ", ".join(
                    f"{fmt_time(a)}/{fmt_time(b)}" for a, b in zip(samples[name, "old"][kind], samples[name, "new"][kind])))
        log("")
        log(f"old = {old_hash}, new = {new_hash}; median over {args.rounds} processes per version; "
            f"ratio = old time / new time of the medians (in brackets: of the fastest processes, and the median "
            f"of the ratios of the two processes of each round)")
        log("\n".join(table))
        log("")
        if args.cold_rounds:
            co, cn = statistics.median(cold["old"]), statistics.median(cold["new"])
            log(f"cold start (new process, empty cache, to the end of the first W2 train step), median of "
                f"{args.cold_rounds}: old {co:.2f} s ({', '.join(f'{t:.2f}' for t in cold['old'])}), "
                f"new {cn:.2f} s ({', '.join(f'{t:.2f}' for t in cold['new'])}); new/old {cn / co:.3f}")
        log(f"load from other processes during the measurements: median {statistics.median(loads):.2f} cores, "
            f"max {max(loads):.2f}")

        for name in sorted({n for n, _ in below}):
            log(f"\nprofile of {name} (KCOMPILER_PROFILE=1, cycles per step over {args.profile_steps} steps, median of "
                f"{args.profile_rounds} processes per version; "
                f"ratios below {args.profile_below} in {[k for n, k in below if n == name]})")
            for v in versions:  # the first run compiles the profiling build
                v.run("profile", name, args.profile_steps, profile=True)
            runs = {(v.label, kind): [] for v in versions for kind in ("train", "predict")}
            for r in range(args.profile_rounds):
                for v in (versions if r % 2 == 0 else versions[::-1]):
                    wait_quiet(args.quiet_wait)
                    res, wall, other = v.run("profile", name, args.profile_steps, profile=True)
                    for kind in ("train", "predict"):
                        runs[v.label, kind].append(dict(res[kind]))
            for kind in ("train", "predict"):
                # per kernel: the median over the profiling processes of its cycles per step
                po, pn = ({k: statistics.median(run[k] for run in runs[label, kind]) for k in runs[label, kind][0]}
                          for label in ("old", "new"))
                to, tn = sum(po.values()), sum(pn.values())
                log(f"  {kind}: old {to / 1e6:.3f} Mcycles/step in {len(po)} kernels, new {tn / 1e6:.3f} in "
                    f"{len(pn)} (old/new {to / max(tn, 1):.2f}); kernels by cycles lost (new - old):")
                log(f"    {'old kcycles':>12} {'new kcycles':>12} {'old/new':>8}  kernel")
                keys = sorted(set(po) | set(pn), key=lambda k: -(pn.get(k, 0) - po.get(k, 0)))
                for k in keys[:15]:
                    o, n = po.get(k, 0.0), pn.get(k, 0.0)
                    log(f"    {o / 1e3:12.1f} {n / 1e3:12.1f} {o / n if n else float('inf'):8.2f}  {k}")
    finally:
        for v in versions:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", v.worktree], capture_output=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def batch_of(name, workloads_py):
    with open(workloads_py) as f:
        text = f.read()
    import re
    m = re.search(rf'Workload\("{name}", "[^"]*batch (\d+)', text)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
