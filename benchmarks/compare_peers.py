"""kcompiler against TensorFlow-Keras and PyTorch on W1–W6, the residual CNN R20 and issue 10's
Transformer (TX) and MobileNet-style (MN) classifiers, in one run
(issue 9): writes the comparison section of docs/benchmarks.md and a chart.

    python benchmarks/compare_peers.py --tf-python /work/venvs/tf/bin/python \\
        --torch-python /work/venvs/torch/bin/python            # the full run (docs/benchmarks.md)
    python benchmarks/compare_peers.py --quick [--workloads W1,W2]   # a short run into out/

Run it with the Python kcompiler is installed in. TensorFlow and PyTorch come from the
environments named by ``--tf-python`` and ``--torch-python`` (defaults: $KC_TF_PYTHON and
$KC_TORCH_PYTHON; a framework without one is left out); they are never dependencies of
kcompiler or its tests. The chart is drawn by ``--plot-python`` (default: the TensorFlow
Python), which needs matplotlib.

What one run does, every measurement in a fresh process, one after another:
1. the machine (benchmarks/machine_peak.py): CPU model, the FMA peak of a generated loop on one
   and on all cores, kcompiler's and numpy's 1024³ SGEMM, a streaming copy, the cycle counter;
2. ``--rounds`` rounds over the workloads; per workload one process per configuration
   (kcompiler fused and unfused — benchmarks/peer_kcompiler.py; TF-Keras default and XLA —
   peer_tensorflow.py; PyTorch eager and torch.compile — peer_torch.py), the order of the
   configurations reversed every other round. Each process warms up, then times windows of
   single steps, waiting (bounded) for a quiet machine and for the host to have the two CPUs
   near each other (benchmarks/placement.py) before each window, then stepping untimed for
   ``--settle-s`` (the first steps after the waits run slow), and recording the CPU that
   other processes used during it and the CPUs' round trip before and after it
   (benchmarks/common.py: timed_windows). A process
   reports per cell the median over its windows of each window's median step; the runner keeps
   each cell's fastest process (NOTES-bench: ratios from the same run, fastest median per cell);
3. cold starts: a new process to the end of W2's first ``train_on_batch`` — kcompiler with an
   empty kernel cache (which is also where saved tuning choices would live) and with a warm
   one, and TF-Keras; R20's first train step, kcompiler (empty cache) and TF-Keras;
4. the kernel profile of kcompiler's fused steps (KCOMPILER_PROFILE=1): cycles per kernel per
   step, with each kernel's FLOPs and bytes moved (kcompiler/flops.py);
5. compile time against depth (benchmarks/bench_compile_time.py: ``--depths`` convolution layers,
   each in fresh processes on an empty and then a warm kernel cache);
6. writes the results as JSON, the section between the ``compare_peers`` markers of
   ``--docs`` (added at the top when missing; the rest of the file is kept) and the chart.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_compile_time import depth_table, measure_depths, per_convolution_growth  # noqa: E402
from benchmarks.common import HZ, PlacementProbe, QuietWaits, cpu_busy, wait_quiet  # noqa: E402
from benchmarks.placement import Server, round_trip_ns  # noqa: E402

WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6", "R20", "TX", "MN"]
DESCRIPTIONS = {"W1": "W1 tiny MLP, batch 5", "W2": "W2 MNIST CNN, batch 64", "W3": "W3 CIFAR CNN, batch 64",
                "W4": "W4 Embedding+LSTM(64), len 200, batch 32",
                "W5": "W5 wide MLP 784-1024-1024-10, batch 256",
                "W6": "W6 Embedding+BiGRU(32), len 100, batch 32",
                "R20": "R20 ResNet-20 (21 conv + BN), batch 64",
                "TX": "TX Transformer classifier (2 blocks, 2 heads of 64), len 128, batch 32",
                "MN": "MN MobileNet-style 96x96x3, batch 32"}


class Config:
    """One column of the comparison: a framework's worker run with one variant."""

    def __init__(self, key, label, framework, script, variant, train, infer, workloads=None):
        self.key, self.label, self.framework, self.variant = key, label, framework, variant
        self.script = os.path.join(ROOT, "benchmarks", script)
        self.train, self.infer = train, infer        # the cells that are its train step and inference
        self.workloads = workloads                  # None: every workload

    def runs(self, workload):
        return self.workloads is None or workload in self.workloads


CONFIGS = [
    Config("kc_fused", "kcompiler fused", "kcompiler", "peer_kcompiler.py", "fused", "train_step", ["predict"]),
    Config("kc_unfused", "unfused", "kcompiler", "peer_kcompiler.py", "unfused", "train_step", ["predict"]),
    Config("tf", "TF-Keras", "tensorflow", "peer_tensorflow.py", "default", "train_on_batch",
           ["predict_on_batch", "tf_function"]),
    Config("tf_xla", "TF-Keras XLA", "tensorflow", "peer_tensorflow.py", "xla", "train_on_batch",
           ["predict_on_batch", "tf_function"]),
    Config("torch", "PyTorch eager", "torch", "peer_torch.py", "eager", "train", ["inference"],
           workloads=WORKLOADS[:6] + ["TX", "MN"]),
    Config("torch_compile", "torch.compile", "torch", "peer_torch.py", "compile", "train", ["inference"],
           workloads=WORKLOADS[:6] + ["TX", "MN"]),
]
PEERS = [c for c in CONFIGS if c.framework != "kcompiler"]
BY_KEY = {c.key: c for c in CONFIGS}


def log(*args):
    print(*args, flush=True)


class Runner:
    def __init__(self, args):
        self.args = args
        self.python = {"kcompiler": sys.executable, "tensorflow": args.tf_python, "torch": args.torch_python}
        self.tmp = tempfile.mkdtemp(prefix="kc-peers-")
        self.cache = os.path.join(self.tmp, "cache")  # the run's kernel cache, warmed by the first processes
        os.mkdir(self.cache, 0o700)
        self.loads = []  # other processes' load (cores) during every process run
        # the CPUs' round trip, asked by every worker before and after each window (placement.py)
        self.placement_socket = os.path.join(self.tmp, "placement.sock")
        self.placement = Server(self.placement_socket) if args.far_ns > 0 else None
        # the runner's own waits (before the cold starts) measure here, with no budget across them
        self.near = PlacementProbe(round_trip_ns, args.far_ns, args.placement_wait, float("inf")).wait_near

    def env(self, cache=None, profile=False):
        # Every framework runs as installed for a user: Python caches its bytecode (a shell that sets
        # PYTHONDONTWRITEBYTECODE would make each process recompile kcompiler's sources, ~0.3 s of every
        # cold start, while the peers' site-packages carry the .pyc files pip wrote).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KCOMPILER_")
               and k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONDONTWRITEBYTECODE")}
        env.update(KCOMPILER_OPT_LEVEL="3", KCOMPILER_CACHE_DIR=cache or self.cache, TF_CPP_MIN_LOG_LEVEL="3")
        if profile:
            env["KCOMPILER_PROFILE"] = "1"
        return env

    def run(self, framework, argv, cache=None, profile=False):
        """One worker process; returns (its RESULT, seconds from spawn, other load in cores) or
        (None, message, load) when it failed."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        b0, t0, epoch = cpu_busy(), time.perf_counter(), time.time()
        try:
            proc = subprocess.run([self.python[framework], *argv], cwd=self.tmp, capture_output=True, text=True,
                                  env=self.env(cache, profile), timeout=self.args.process_timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {self.args.process_timeout} s", 0.0
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        other = max(0.0, (cpu_busy() - b0) / HZ - own) / wall
        self.loads.append(other)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return None, f"exit {proc.returncode}: {' | '.join(tail)}", other
        result = json.loads(lines[-1][len("RESULT "):])
        if "end" in result:
            result["cold_s"] = result["end"] - epoch
        return result, wall, other

    def worker_argv(self, config, workload, mode="steady"):
        a = self.args
        return [config.script, config.variant, workload, "--mode", mode, "--windows", str(a.windows),
                "--window-s", str(a.window_s), "--settle-s", str(a.settle_s), "--quiet-wait", str(a.quiet_wait),
                "--quiet-budget", str(a.quiet_budget), "--retries", str(a.retries),
                "--steps", str(a.profile_steps)] + ([
                    "--placement", self.placement_socket, "--far-ns", str(a.far_ns), "--placement-wait",
                    str(a.placement_wait), "--placement-budget", str(a.placement_budget)] if self.placement else [])

    def available(self, config):
        python = self.python[config.framework]
        return bool(python) and os.path.exists(python) and config.key in self.args.configs

    # ---- the measurements -------------------------------------------------------------------------
    def machine(self):
        result, wall, other = self.run("kcompiler", [os.path.join(ROOT, "benchmarks", "machine_peak.py"),
                                                     str(self.args.quiet_wait), str(self.args.quiet_budget)])
        if result is None:
            raise SystemExit(f"measuring the machine failed: {wall}")
        log(f"machine: {result['cpu_model']} ({result['llvm_cpu']}), {result['nproc']} CPUs; FMA peak "
            f"{result['fma_peak_all']['gflops']:.0f} GFLOP/s on all cores ({result['fma_peak_1']['gflops']:.0f} on one); "
            f"SGEMM 1024³ kcompiler {result['sgemm']['kcompiler_gflops']:.0f}, numpy "
            f"{result['sgemm']['numpy_gflops']:.0f} GFLOP/s; copy {result['copy_gbs']:.1f} GB/s")
        return result

    def steady(self, workloads):
        """{workload: {config key: [process results]}}, and the errors."""
        samples = {w: {c.key: [] for c in CONFIGS} for w in workloads}
        errors = []
        for r in range(self.args.rounds):
            order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
            for w in workloads:
                for c in order:
                    if not (self.available(c) and c.runs(w)):
                        continue
                    result, wall, other = self.run(c.framework, self.worker_argv(c, w))
                    if result is None:
                        errors.append(f"{c.label} {w}: {wall}")
                        log(f"round {r + 1} {w} {c.label}: FAILED {wall}")
                        continue
                    result["process_other_load"] = other
                    samples[w][c.key].append(result)
                    cells = ", ".join(f"{k} {fmt_ms(v['seconds'])}" for k, v in result["cells"].items())
                    log(f"round {r + 1} {w} {c.label}: {cells} ({wall:.0f} s, other load {other:.2f} cores)")
        return samples, errors

    def cold(self, workloads):
        """Cold starts of W2 (kcompiler empty and warm cache, TF-Keras) and of R20 (kcompiler
        empty cache, TF-Keras), those of them in ``workloads``: seconds from spawn to the end
        of the first train step."""
        runs = {k: [] for k in ("W2 kcompiler empty", "W2 kcompiler warm", "W2 TF-Keras",
                                "R20 kcompiler empty", "R20 TF-Keras")}
        wait = QuietWaits(self.args.quiet_wait, self.args.quiet_budget)
        warm = os.path.join(self.tmp, "warm-cache")
        os.mkdir(warm, 0o700)
        if "W2" in workloads:
            self.run("kcompiler", self.worker_argv(BY_KEY["kc_fused"], "W2", "cold"), cache=warm)
        for r in range(self.args.cold_rounds):
            for w in [w for w in ("W2", "R20") if w in workloads]:
                jobs = [("kcompiler empty", BY_KEY["kc_fused"], None)]
                if w == "W2":
                    jobs.append(("kcompiler warm", BY_KEY["kc_fused"], warm))
                if self.available(BY_KEY["tf"]):
                    jobs.append(("TF-Keras", BY_KEY["tf"], None))
                for label, config, cache in (jobs if r % 2 == 0 else jobs[::-1]):
                    empty = tempfile.mkdtemp(prefix="cold-", dir=self.tmp) if cache is None else None
                    waited = wait()
                    near = self.near() if self.placement else None
                    result, wall, other = self.run(config.framework, self.worker_argv(config, w, "cold"),
                                                   cache=cache or empty)
                    if empty:
                        shutil.rmtree(empty, ignore_errors=True)
                    if result is None:
                        log(f"cold {w} {label}: FAILED {wall}")
                        continue
                    runs[f"{w} {label}"].append({"seconds": result["cold_s"], "load_before": waited,
                                                 "other_load": other, "round_trip_ns": near})
                    log(f"cold {w} {label}: {result['cold_s']:.2f} s (other load {other:.2f} cores)")
        return runs

    def compile_depths(self):
        """Compile time against depth (benchmarks/bench_compile_time.py), each depth in fresh
        processes on an empty kernel cache, after a quiet wait."""
        rows = []
        for depth in self.args.depths:
            wait_quiet(self.args.quiet_wait)
            rows += measure_depths([depth])
            log(f"compile depth {depth}: {rows[-1]['cold_s']:.2f} s cold, {rows[-1]['warm_s']:.3f} s warm")
        return rows

    def profiles(self, workloads):
        out = {}
        for w in workloads:
            result, wall, other = self.run("kcompiler", self.worker_argv(BY_KEY["kc_fused"], w, "profile"),
                                           profile=True)
            if result is None:
                log(f"profile {w}: FAILED {wall}")
                continue
            out[w] = result
            log(f"profile {w}: {len(result['train'])} kernels in training, {len(result['predict'])} in inference")
        return out

    def versions(self):
        found = {"Python (kcompiler)": platform.python_version()}
        code = {"tensorflow": "import tensorflow as t, keras as k; print('TensorFlow', t.__version__, '/ Keras', "
                              "k.__version__)",
                "torch": "import torch; print('PyTorch', torch.__version__)"}
        for framework, snippet in code.items():
            python = self.python[framework]
            if python and os.path.exists(python):
                done = subprocess.run([python, "-c", snippet], capture_output=True, text=True, env=self.env())
                found[framework] = done.stdout.strip() or "unavailable"
        return found


# ---- summarising -----------------------------------------------------------------------------------

def fmt_ms(seconds):
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_us(seconds):
    return f"{seconds * 1e6:.1f}" if seconds < 1e-4 else f"{seconds * 1e6:.0f}"


def best_cell(processes, cell):
    """The fastest process's median of ``cell`` (None when no process measured it)."""
    values = [p["cells"][cell]["seconds"] for p in processes if cell in p.get("cells", {})]
    return min(values) if values else None


def summarise(samples):
    """{workload: {config key: {"train": s, "infer": s, "infer_cell": name, cells...}}}."""
    table = {}
    for w, by_config in samples.items():
        table[w] = {}
        for c in CONFIGS:
            processes = by_config.get(c.key, [])
            if not processes:
                continue
            cells = {cell: best_cell(processes, cell) for cell in processes[0]["cells"]}
            infer_cell = min((k for k in c.infer if cells.get(k) is not None), key=lambda k: cells[k], default=None)
            table[w][c.key] = {"train": cells.get(c.train), "infer": cells.get(infer_cell), "infer_cell": infer_cell,
                               "cells": cells, "flops": processes[0].get("flops")}
    return table


def fastest_peer(row, what):
    peers = [(row[c.key][what], c) for c in PEERS if c.key in row and row[c.key][what] is not None]
    return min(peers, key=lambda p: p[0]) if peers else (None, None)


def ratio(peer, mine):
    if not (peer and mine):
        return "—"
    r = peer / mine
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def flops_of(table, w):
    for key in ("kc_fused", "kc_unfused"):
        if table.get(w, {}).get(key, {}).get("flops"):
            return table[w][key]["flops"]
    return None


def pct(value, whole):
    return f"{100 * value / whole:.0f} %" if value and whole else "—"


def gflops(flops, seconds):
    return flops / seconds / 1e9 if flops and seconds else None


def markdown(results, chart_name):
    m, table, cold = results["machine"], results["table"], results["cold"]
    peak = m["fma_peak_all"]["gflops"]
    sgemm = m["sgemm"]["kcompiler_gflops"]
    a = results["settings"]
    lines = [
        "<!-- compare_peers: begin (written by benchmarks/compare_peers.py; edits between the markers are lost) -->",
        "## Against TensorFlow-Keras and PyTorch — `python benchmarks/compare_peers.py`",
        "",
        f"Run {results['date']}{' (--quick: few repetitions, not a record)' if a['quick'] else ''}. "
        f"Machine: {m['cpu_model']} (LLVM CPU `{m['llvm_cpu']}`), {m['nproc']} CPUs. Measured in the same run: "
        f"a generated FMA loop ({m['fma_peak_all']['lanes']}-wide vectors) peaks at **{peak:.0f} GFLOP/s** on all "
        f"cores ({m['fma_peak_1']['gflops']:.0f} on one); 1024³ SGEMM: kcompiler **{sgemm:.0f} GFLOP/s**, numpy "
        f"{m['sgemm']['numpy_gflops']:.0f}; a 64 MiB numpy copy {m['copy_gbs']:.1f} GB/s (one thread, read + write). "
        f"Versions: kcompiler {results['kcompiler_version']}, llvmlite {m['llvmlite']}, numpy {m['numpy']}, "
        + ", ".join(f"{v}" for k, v in results["versions"].items() if k != "Python (kcompiler)")
        + f"; Python {results['versions']['Python (kcompiler)']}. `KCOMPILER_OPT_LEVEL=3`, OPENBLAS_CORETYPE unset.",
        "",
        f"Method: every configuration in its own fresh process, one after another; {a['rounds']} round(s), the "
        f"order of the configurations reversed every other round; per process {a['warmup']} warm-up steps, then "
        f"{a['windows']} windows of ~{a['window_s']} s of single timed steps, each window after waiting (at most "
        f"{a['quiet_wait']:.0f} s each, {a.get('quiet_budget', 0):.0f} s per process) for the other processes "
        f"to use under 0.2 cores for two seconds, and redone "
        f"(up to {a['retries']}x) when they used more than 0.3 cores during it"
        + (f"; and before each window, waiting (at most {a['placement_wait']:.0f} s each, "
           f"{a['placement_budget']:.0f} s per process) for the host to have the two CPUs near each other (a cache "
           f"line's round trip between them at most {a['far_ns']:.0f} ns, benchmarks/placement.py; the window "
           f"redone as above when it was not, after it; after a far reading, two near readings a second apart)"
           if a.get("far_ns") else "")
        + (f"; then {a['settle_s']} s of untimed steps" if a.get("settle_s") else "")
        + ". A process's figure is the median "
        f"over its windows of each window's median step; each cell is the fastest process's figure. "
        f"{load_summary(results)}",
        "",
        "Train ms per step (inference ms per batch). kcompiler: `kcompiler.compile(model, training=True, "
        "batch_size=B).train_step` (`.predict`); TF-Keras: `train_on_batch` (the faster of `predict_on_batch` and "
        "`tf.function(model(x, training=False))`); PyTorch: zero_grad/forward/loss/backward/step with "
        "`torch.set_num_threads(2)` (`model(x)` under `inference_mode`); torch.compile of forward+loss and of "
        "`opt.step` (and of the model for inference). Ratio = fastest peer's time / kcompiler fused's time "
        "(> 1: kcompiler is faster).",
        "",
        "| workload | kcompiler fused | unfused | TF-Keras | TF-Keras XLA | PyTorch eager | torch.compile "
        "| kcompiler vs fastest peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w, row in table.items():
        cells = []
        for c in CONFIGS:
            if c.key not in row:
                cells.append("—")
                continue
            r = row[c.key]
            cells.append(f"{fmt_ms(r['train'])} ({fmt_ms(r['infer'])})" if r["infer"] else fmt_ms(r["train"]))
        mine = row.get("kc_fused", {})
        pt, _ = fastest_peer(row, "train")
        pi, _ = fastest_peer(row, "infer")
        lines.append(f"| {DESCRIPTIONS[w]} | " + " | ".join(cells)
                     + f" | {ratio(pt, mine.get('train'))} ({ratio(pi, mine.get('infer'))}) |")
    lines += [
        "",
        "kcompiler through the Keras API (`model.train_on_batch` / `model.predict_on_batch`, what a user calls) "
        "against the fastest peer; the FLOPs of a step counted from kcompiler's IR (kcompiler/flops.py: "
        "multiply-adds of the contractions and recurrent projections count 2, element-wise ops 1 per element; "
        "a convolution's those of the direct algorithm, whoever runs it: kcompiler's Winograd convolutions do "
        "fewer, so their rates are effective ones and may pass the FMA peak) "
        "and the GFLOP/s they mean for kcompiler's `train_step` / `predict` and for the fastest peer:",
        "",
        "| workload | GFLOP train / inference | kcompiler train_on_batch (predict_on_batch) ms | vs fastest peer "
        "| kcompiler train_step GFLOP/s: % of FMA peak, % of kcompiler SGEMM | predict: % of FMA peak "
        "| fastest peer's train: % of FMA peak | unfused / fused train |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w, row in table.items():
        f = flops_of(table, w)
        mine = row.get("kc_fused")
        if not mine:
            continue
        cells = mine["cells"]
        pt, ct = fastest_peer(row, "train")
        pi, _ = fastest_peer(row, "infer")
        g_train = gflops(f and f["train"], mine["train"])
        g_infer = gflops(f and f["predict"], mine["infer"])
        unfused = row.get("kc_unfused", {}).get("train")
        lines.append(
            f"| {w} | {f['train'] / 1e9:.3g} / {f['predict'] / 1e9:.3g} | {fmt_ms(cells.get('train_on_batch'))} "
            f"({fmt_ms(cells.get('predict_on_batch'))}) | {ratio(pt, cells.get('train_on_batch'))} "
            f"({ratio(pi, cells.get('predict_on_batch'))}) | {g_train or 0:.1f} GFLOP/s: {pct(g_train, peak)}, "
            f"{pct(g_train, sgemm)} | {pct(g_infer, peak)} | "
            f"{pct(gflops(f['train'], pt), peak)}{f' ({ct.label})' if ct else ''} | "
            f"{ratio(unfused, mine['train'])} |")
    lines += ["", *r20_lines(table), "", *cold_lines(cold), "", *depth_lines(results.get("compile_depths")),
              *target_lines(results), ""]
    if chart_name:
        lines += [f"![train and inference time per workload]({chart_name})", ""]
    lines += [*profile_lines(results), "", *detail_lines(results),
              "<!-- compare_peers: end -->"]
    return "\n".join(lines) + "\n"


def load_summary(results):
    windows = [win for w in results["samples"].values() for ps in w.values() for p in ps
               for cell in p["cells"].values() for win in cell["windows"]]
    if not windows:
        return ""
    flagged = sum(win["flagged"] for win in windows)
    loads = [win["other_load"] for win in windows]
    text = (f"Other processes' load during the {len(windows)} timed windows: median {statistics.median(loads):.2f} "
            f"cores, max {max(loads):.2f}; {flagged} window(s) stayed flagged after the retries "
            f"(kept, flagged in the JSON).")
    trips = [ns for win in windows for ns in win.get("round_trip_ns") or [] if ns is not None]
    far_ns = results["settings"].get("far_ns")
    if trips and far_ns:
        far = [ns for ns in trips if ns > far_ns]
        text += (f" The CPUs' round trip before and after the windows: median {statistics.median(trips):.0f} ns; "
                 f"{len(far)} of {len(trips)} probes found them far apart (median {statistics.median(far):.0f} ns)."
                 if far else f" The CPUs' round trip before and after the windows: median "
                 f"{statistics.median(trips):.0f} ns, never above {far_ns:.0f}.")
    return text


def median_cold(cold, key):
    values = [r["seconds"] for r in cold.get(key, [])]
    return statistics.median(values) if values else None


def cold_lines(cold):
    kc_empty, kc_warm, tf = (median_cold(cold, k) for k in ("W2 kcompiler empty", "W2 kcompiler warm", "W2 TF-Keras"))
    r_kc, r_tf = median_cold(cold, "R20 kcompiler empty"), median_cold(cold, "R20 TF-Keras")

    def s(v):
        return f"{v:.2f} s" if v else "—"

    def share(v, w):
        return f"{v / w:.2f}x" if v and w else "—"

    rounds = max((len(v) for v in cold.values()), default=0)
    if not rounds:
        return ["Cold start: not measured in this run (it needs W2 or R20 and kcompiler fused)."]
    return [
        f"Cold start, a new process to the end of the first `train_on_batch` (median of {rounds}; imports, model "
        "build, tracing, compilation, one step). kcompiler's empty cache is a new `KCOMPILER_CACHE_DIR` (kernel "
        "objects and anything tuned and saved with them); the warm one was filled by an earlier process:",
        "",
        "| model | kcompiler, empty cache | kcompiler, warm cache | TF-Keras | kcompiler / TF-Keras (empty, warm) |",
        "|---|---|---|---|---|",
        f"| W2 | {s(kc_empty)} | {s(kc_warm)} | {s(tf)} | {share(kc_empty, tf)}, {share(kc_warm, tf)} |",
        f"| R20 | {s(r_kc)} | — | {s(r_tf)} | {share(r_kc, r_tf)} |",
    ]


def depth_lines(rows):
    """The compile-time-against-depth table (benchmarks/bench_compile_time.py) and a blank line,
    when measured."""
    if not rows:
        return []
    return ["Compile time against depth (benchmarks/bench_compile_time.py): Conv2D(16, 3, 'same', relu) x N on "
            "16x16x3, then GlobalAveragePooling2D and Dense(10), Adam; `kcompiler.compile(model, training=True, "
            "batch_size=8)` in a fresh process on an empty kernel cache (the support library timed apart), then "
            "in another on the cache it filled:", "", *depth_table(rows), ""]


def r20_lines(table):
    r20 = table.get("R20", {})
    kc_train = r20.get("kc_fused", {}).get("train")
    best_tf = min((r20[k]["train"] for k in ("tf", "tf_xla") if r20.get(k, {}).get("train")), default=None)
    line = ("R20 is ResNet-20 for CIFAR (He et al. 2016): 21 Conv2D layers without bias (a 3x3 stem, 9 basic "
            "blocks of two 3x3 convolutions with 16/32/64 filters, 1x1 projection shortcuts where a stage strides "
            "by 2), BatchNormalization after every convolution, 9 residual additions, global average pooling, "
            "Dense(10); 32x32x3, batch 64, Adam 1e-3, sparse crossentropy from logits (benchmarks/workloads.py "
            "DEEP_WORKLOADS; compared with TF-Keras only: not defined for PyTorch).")
    if kc_train and best_tf:
        line += (f" Its train step: the faster TF-Keras configuration's time / kcompiler's = "
                 f"{ratio(best_tf, kc_train)}.")
    return [line]


def target_lines(results):
    """Issue 9's 'Done when' ratios, as this run measured them."""
    table, cold = results["table"], results["cold"]
    peak, sgemm = results["machine"]["fma_peak_all"]["gflops"], results["machine"]["sgemm"]["kcompiler_gflops"]
    lines = ["Issue 9's targets, from this run:", ""]
    goals = {"W1": 20, "W2": 2, "W3": 1.8, "W4": 1.5, "W5": 1.2, "W6": 3}
    for w, goal in goals.items():
        row = table.get(w, {})
        mine = row.get("kc_fused")
        if not mine:
            continue
        pt, _ = fastest_peer(row, "train")
        pi, _ = fastest_peer(row, "infer")
        keras_api = w == "W1"  # the per-call Python work is what limits W1: the target is set through Keras
        mine_train = mine["cells"].get("train_on_batch") if keras_api else mine["train"]
        mine_infer = mine["cells"].get("predict_on_batch") if keras_api else mine["infer"]
        got = pt / mine_train if pt and mine_train else None
        got_i = pi / mine_infer if pi and mine_infer else None
        extra = ""
        if w == "W4" and flops_of(table, w):
            extra = f"; {pct(gflops(flops_of(table, w)['train'], mine['train']), peak)} of the FMA peak"
        lines.append(f"- {w} train vs fastest peer{' (through train_on_batch / predict_on_batch)' if keras_api else ''}: "
                     f"{got:.2f}x (target >= {goal}x: {'met' if got and got >= goal else 'not met'}){extra}; "
                     f"inference {got_i:.2f}x (target >= 1: {'met' if got_i and got_i >= 1 else 'not met'})"
                     if got and got_i else f"- {w}: no peer measured")
    for w in ("W2", "W3"):
        mine, f = table.get(w, {}).get("kc_fused"), flops_of(table, w)
        if mine and f:
            share = gflops(f["train"], mine["train"]) / sgemm
            lines.append(f"- {w} train step at {100 * share:.0f} % of kcompiler's SGEMM GFLOP/s "
                         f"(target >= 65 %: {'met' if share >= 0.65 else 'not met'})")
    for w in ("W2", "W3"):
        row = table.get(w, {})
        if "kc_fused" in row and "kc_unfused" in row:
            r = row["kc_unfused"]["train"] / row["kc_fused"]["train"]
            lines.append(f"- {w} fused vs unfused train step: {r:.2f}x (target >= 1.3x: {'met' if r >= 1.3 else 'not met'})")
    kc_empty, kc_warm, tf = (median_cold(cold, k) for k in ("W2 kcompiler empty", "W2 kcompiler warm", "W2 TF-Keras"))
    if kc_empty and tf:
        lines.append(f"- W2 cold start: empty cache {kc_empty / tf:.2f}x TF-Keras's (target <= 0.6x: "
                     f"{'met' if kc_empty / tf <= 0.6 else 'not met'}), warm {kc_warm / tf:.2f}x (target <= 0.1x: "
                     f"{'met' if kc_warm / tf <= 0.1 else 'not met'})")
    r_kc, r_tf = median_cold(cold, "R20 kcompiler empty"), median_cold(cold, "R20 TF-Keras")
    r20 = table.get("R20", {})
    if r_kc and r_tf:
        lines.append(f"- R20 first train step: {r_kc / r_tf:.2f}x TF-Keras's (target <= 1x: "
                     f"{'met' if r_kc <= r_tf else 'not met'})")
    best_tf = min((r20[k]["train"] for k in ("tf", "tf_xla") if r20.get(k, {}).get("train")), default=None)
    if "kc_fused" in r20 and best_tf:
        r = best_tf / r20["kc_fused"]["train"]
        lines.append(f"- R20 train step vs the faster TF-Keras configuration: {r:.2f}x (target >= 1.5x: "
                     f"{'met' if r >= 1.5 else 'not met'})")
    growth = per_convolution_growth(results.get("compile_depths") or [])
    if growth:
        lines.append(f"- Compile time per convolution at 40 layers: {growth:.2f}x that at 10 (target <= 1.25x: "
                     f"{'met' if growth <= 1.25 else 'not met'})")
    return lines


def profile_lines(results, top_train=8, top_predict=4):
    m = results["machine"]
    peak, copy = m["fma_peak_all"]["gflops"], m["copy_gbs"]
    lines = ["Where kcompiler's fused steps spend their time (KCOMPILER_PROFILE=1: cycles per kernel per step "
             f"over {results['settings']['profile_steps']} steps after one warm-up, the cycle counter at "
             f"{m['cycle_hz'] / 1e9:.2f} GHz; the profiled build is not the timed one). Per kernel: share of the "
             f"step's kernel cycles, µs, achieved GFLOP/s and its share of the {peak:.0f} GFLOP/s FMA peak, bytes "
             f"read and written at least once and the GB/s they mean (the streaming copy above: {copy:.1f} GB/s). "
             "The largest kernels of each step; the rest summed.", ""]
    for w, prof in results["profiles"].items():
        for kind, top in (("train", top_train), ("predict", top_predict)):
            rows = prof[kind]
            total = sum(r["cycles"] for r in rows) or 1
            seconds = sum(r["seconds"] for r in rows)
            flops = sum(r["flops"] for r in rows)
            groups = {}
            for r in rows:
                group = r["fused"][0] if r["op"] == "fused_contraction" else (
                    "element-wise (fused)" if r["op"] == "fused" else r["op"])
                groups[group] = groups.get(group, 0) + r["cycles"]
            by_kind = ", ".join(f"{g} {100 * c / total:.0f} %" for g, c in
                                sorted(groups.items(), key=lambda kv: -kv[1]) if c / total >= 0.01)
            lines += [f"**{w} {'training step' if kind == 'train' else 'inference'}**: {len(rows)} kernels, "
                      f"{seconds * 1e3:.3f} ms of kernel time per step, {gflops(flops, seconds) or 0:.1f} GFLOP/s "
                      f"overall ({pct(gflops(flops, seconds), peak)} of peak). By kind (a fused contraction counted "
                      f"as its head): {by_kind}.", "",
                      "| kernel | ops | share | µs | GFLOP/s | % of FMA peak | MB moved | GB/s |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows[:top]:
                g = gflops(r["flops"], r["seconds"])
                gbs = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] else 0
                ops = "+".join(r["fused"]) if r["fused"] else r["op"]
                lines.append(f"| {r['kernel']} | {ops} | {100 * r['cycles'] / total:.1f} % | {fmt_us(r['seconds'])} "
                             f"| {g or 0:.1f} | {pct(g, peak)} | {r['bytes'] / 1e6:.2f} | {gbs:.1f} |")
            rest = rows[top:]
            if rest:
                rs = sum(r["seconds"] for r in rest)
                lines.append(f"| {len(rest)} others | | {100 * sum(r['cycles'] for r in rest) / total:.1f} % "
                             f"| {fmt_us(rs)} | {gflops(sum(r['flops'] for r in rest), rs) or 0:.1f} | | "
                             f"{sum(r['bytes'] for r in rest) / 1e6:.2f} | |")
            lines.append("")
    return lines


def detail_lines(results):
    peak = results["machine"]["fma_peak_all"]["gflops"]
    lines = ["<details><summary>Every measured cell (fastest process's median; load = the most that other "
             "processes used during one of its windows)</summary>", "",
             "| workload | configuration | call | ms | GFLOP/s | % of FMA peak | processes | windows flagged | max other load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for w, by_config in results["samples"].items():
        f = flops_of(results["table"], w)
        for key, processes in by_config.items():
            if not processes:
                continue
            for cell in processes[0]["cells"]:
                best = best_cell(processes, cell)
                wins = [win for p in processes for win in p["cells"][cell]["windows"]]
                kind = "train" if "train" in cell else "predict"
                g = gflops(f and f[kind], best)
                lines.append(f"| {w} | {BY_KEY[key].label} | {cell} | {fmt_ms(best)} | {g or 0:.2f} | {pct(g, peak)} "
                             f"| {len(processes)} | {sum(x['flagged'] for x in wins)}/{len(wins)} "
                             f"| {max(x['other_load'] for x in wins):.2f} |")
    if results["errors"]:
        lines += ["", "Failed processes: " + "; ".join(results["errors"])]
    return lines + ["", "</details>", ""]


def write_docs(path, section):
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    begin, end = "<!-- compare_peers: begin", "<!-- compare_peers: end -->"
    if begin in old and end in old:
        new = old[:old.index(begin)] + section + old[old.index(end) + len(end) + 1:]
    else:  # first run: the comparison goes before the first section
        at = old.find("\n## ")
        new = (old + "\n" + section) if at < 0 else old[:at + 1] + section + "\n" + old[at + 1:]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(new)


def measure(args, workloads):
    """Every measurement of one run (the module docstring's steps 1-4) as one JSON-able dict."""
    runner = Runner(args)
    started = time.monotonic()
    try:
        for framework, python in (("TensorFlow", args.tf_python), ("PyTorch", args.torch_python)):
            if not (python and os.path.exists(python)):
                log(f"{framework}: no Python given or found ({python!r}): left out")
        machine = runner.machine()
        samples, errors = runner.steady(workloads)
        cold = runner.cold(workloads) if "kc_fused" in args.configs else {}
        profiles = runner.profiles(workloads) if "kc_fused" in args.configs else {}
        depths = runner.compile_depths() if "kc_fused" in args.configs and args.depths else []
        import kcompiler
        results = {"date": datetime.date.today().isoformat(), "machine": machine, "versions": runner.versions(),
                   "kcompiler_version": kcompiler.__version__, "samples": samples, "errors": errors,
                   "table": summarise(samples), "cold": cold, "profiles": profiles, "compile_depths": depths,
                   "settings": {"quick": args.quick, "rounds": args.rounds, "windows": args.windows,
                                "window_s": args.window_s, "warmup": args.warmup, "settle_s": args.settle_s,
                                "quiet_wait": args.quiet_wait,
                                "quiet_budget": args.quiet_budget,
                                "retries": args.retries, "cold_rounds": args.cold_rounds,
                                "far_ns": args.far_ns, "placement_wait": args.placement_wait,
                                "placement_budget": args.placement_budget,
                                "profile_steps": args.profile_steps, "workloads": workloads,
                                "depths": args.depths},
                   "other_load": {"median": statistics.median(runner.loads) if runner.loads else None,
                                  "max": max(runner.loads, default=None)},
                   "run_seconds": time.monotonic() - started}
    finally:
        if runner.placement is not None:
            runner.placement.close()
        shutil.rmtree(runner.tmp, ignore_errors=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf-python", default=os.environ.get("KC_TF_PYTHON"), help="Python with tensorflow (-cpu)")
    ap.add_argument("--torch-python", default=os.environ.get("KC_TORCH_PYTHON"), help="Python with torch")
    ap.add_argument("--plot-python", default=None, help="Python with matplotlib (default: --tf-python)")
    ap.add_argument("--quick", action="store_true",
                    help="few repetitions and W1,W2 only, short quiet waits; writes into out/ unless --docs is given")
    ap.add_argument("--workloads", default=None, help=f"comma-separated, from {','.join(WORKLOADS)}")
    ap.add_argument("--configs", default=",".join(c.key for c in CONFIGS),
                    help=f"comma-separated, from {','.join(c.key for c in CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=None, help="processes per configuration and workload (2)")
    ap.add_argument("--windows", type=int, default=None, help="timed windows per cell per process (5)")
    ap.add_argument("--window-s", type=float, default=None, help="seconds per window (0.5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--settle-s", type=float, default=None,
                    help="seconds of untimed steps after the waits, before each window (0.2)")
    ap.add_argument("--quiet-wait", type=float, default=None, help="max seconds to wait for a quiet machine (120)")
    ap.add_argument("--quiet-budget", type=float, default=None,
                    help="max seconds of such waits per worker process, and for all cold starts together (600)")
    ap.add_argument("--retries", type=int, default=None, help="redo a window that other work disturbed (1)")
    ap.add_argument("--far-ns", type=float, default=250.0,
                    help="wait before each window until a cache line's round trip between the two CPUs is at most "
                         "this (benchmarks/placement.py); 0: do not probe")
    ap.add_argument("--placement-wait", type=float, default=None, help="max seconds per such wait (30)")
    ap.add_argument("--placement-budget", type=float, default=None, help="max seconds of such waits per process (120)")
    ap.add_argument("--cold-rounds", type=int, default=None, help="cold starts per kind (3)")
    ap.add_argument("--profile-steps", type=int, default=None, help="steps per kernel profile (20)")
    ap.add_argument("--depths", default="5,10,20,40",
                    help="convolution layers of the compile-time-against-depth models ('': skip)")
    ap.add_argument("--process-timeout", type=float, default=1800.0)
    ap.add_argument("--docs", default=None, help="markdown file to write the section into (docs/benchmarks.md)")
    ap.add_argument("--chart", default=None, help="PNG chart (docs/benchmarks-peers.png)")
    ap.add_argument("--json", default=None, help="raw results (out/compare_peers.json)")
    ap.add_argument("--render", metavar="JSON", help="measure nothing: write the docs and chart from these results")
    args = ap.parse_args()
    quick = args.quick
    defaults = dict(rounds=(1, 2), windows=(2, 5), window_s=(0.1, 0.5), quiet_wait=(3.0, 120.0),
                    quiet_budget=(30.0, 600.0), retries=(0, 1), cold_rounds=(1, 3), profile_steps=(5, 20),
                    placement_wait=(3.0, 30.0), placement_budget=(10.0, 120.0), settle_s=(0.05, 0.2))
    for name, (fast, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else full)
    workloads = (args.workloads or ("W1,W2" if quick else ",".join(WORKLOADS))).split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; expected some of {WORKLOADS}")
    args.configs = args.configs.split(",")
    args.depths = [int(d) for d in args.depths.split(",") if d]
    out = os.path.join(ROOT, "out")
    args.docs = args.docs or (os.path.join(out, "benchmarks-quick.md") if quick else os.path.join(ROOT, "docs", "benchmarks.md"))
    args.chart = args.chart or os.path.join(os.path.dirname(os.path.abspath(args.docs)), "benchmarks-peers.png")
    args.json = args.json or os.path.join(out, "compare_peers-quick.json" if quick else "compare_peers.json")
    plot_python = args.plot_python or args.tf_python

    if args.render:
        with open(args.render) as f:
            results = json.load(f)
    else:
        results = measure(args, workloads)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    chart_name = None
    if plot_python and os.path.exists(plot_python):
        done = subprocess.run([plot_python, os.path.join(ROOT, "benchmarks", "plot_peers.py"),
                               args.render or args.json, args.chart],
                              capture_output=True, text=True)
        if done.returncode == 0:
            chart_name = os.path.relpath(args.chart, os.path.dirname(os.path.abspath(args.docs)))
        else:
            log(f"chart not drawn: {done.stderr.strip().splitlines()[-1:]}")
    section = markdown(results, chart_name)
    write_docs(args.docs, section)
    log("")
    log(section)
    log(f"wrote {args.docs}, {args.json}{', ' + args.chart if chart_name else ''} in "
        f"{results['run_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
