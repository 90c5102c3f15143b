"""Timing helpers shared by the benchmarks: best-of-N medians, optional frameworks, and the
quiet-machine windows of NOTES-bench (wait until other processes leave the CPUs alone and the
host has the two CPUs near each other, time, record how much CPU other processes took
meanwhile and the CPUs' round trip before and after).

Standard library only: the comparison runner's workers import this module from the
TensorFlow and PyTorch environments too."""
import math
import os
import platform
import statistics
import time

HZ = os.sysconf("SC_CLK_TCK")


def timeit(fn, *, warmup=3, repeat=7, number=None, min_time=0.2):
    """Median seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    for _ in range(warmup):
        fn()
    if number is None:
        number, t = 1, 0.0
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            t = time.perf_counter() - start
            if t >= min_time / 5 or number > 1 << 20:
                break
            number *= 2
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def optional(module):
    try:
        return __import__(module)
    except Exception:
        return None


def machine():
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def cpu_busy():
    """Busy jiffies of the whole machine so far (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def own_cpu():
    """CPU seconds this process (all its threads) and its waited-for children used so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_quiet(limit_s=120.0, threshold=0.2):
    """Wait until the CPU use of the other processes stays under ``threshold`` cores for two
    consecutive seconds (at most ``limit_s``); returns the last second's load in cores."""
    deadline = time.monotonic() + limit_s
    quiet = 0
    while True:
        b0, own0 = cpu_busy(), own_cpu()
        time.sleep(1.0)
        load = max(0.0, (cpu_busy() - b0) / HZ - (own_cpu() - own0))
        quiet = quiet + 1 if load < threshold else 0
        if quiet >= 2 or time.monotonic() > deadline:
            return load


class QuietWaits:
    """Waits for a quiet machine (``wait_quiet``), each at most ``limit_s`` and all of them
    together at most ``budget_s``: on a machine that never gets quiet a run still ends, its
    windows then flagged by the load they saw. Calling it returns the load before, or None
    when it did not wait."""

    def __init__(self, limit_s=120.0, budget_s=600.0, threshold=0.2):
        self.limit_s, self.left, self.threshold = limit_s, budget_s, threshold

    def __call__(self):
        if self.limit_s <= 0 or self.left <= 0:
            return None
        start = time.monotonic()
        load = wait_quiet(min(self.limit_s, self.left), self.threshold)
        self.left -= time.monotonic() - start
        return load


class PlacementProbe:
    """The round trip between the machine's first two CPUs (ns, or None), from ``measure_ns()``.
    ``wait_near()`` waits (each time at most ``limit_s``, all together at most ``budget_s``) until
    it is at most ``far_ns``: the host then has the two CPUs near each other. A worker asks the
    runner's probe server (benchmarks/placement.py: the probe is JIT-compiled, and this module
    must run in every framework's environment): ``PlacementProbe.over_socket(path, ...)``."""

    def __init__(self, measure_ns, far_ns=250.0, limit_s=30.0, budget_s=120.0):
        self.measure, self.far_ns, self.limit_s, self.left = measure_ns, far_ns, limit_s, budget_s

    @classmethod
    def over_socket(cls, path, *args):
        """A probe asking the server at the Unix socket ``path``."""
        return cls(_ProbeServer(path), *args)

    def far(self, ns):
        return ns is not None and ns > self.far_ns

    def wait_near(self):
        """The round trip once it is near (or the waits ran out), in ns; None without a probe.
        After a far reading it must read near twice, a second apart: for 0.5-1.2 s after the host
        brings the CPUs back together, W2's step still runs 5-30 % slow (measured between W2's
        windows, 2026-12-05), and a window started at the first near reading timed that."""
        start = time.monotonic()
        settled = True
        while True:
            ns = self.measure()
            near = not self.far(ns)
            if (near and settled) or time.monotonic() - start >= min(self.limit_s, self.left):
                self.left -= time.monotonic() - start
                return ns
            settled = near
            time.sleep(1.0)


class _ProbeServer:
    """``round_trip_ns()`` asked of benchmarks/placement.py's Server over a Unix socket, one line
    each way; any failure to reach it turns it off (None answers)."""

    def __init__(self, path):
        import socket
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            self.stream = sock.makefile("rw")
        except OSError:
            self.stream = None

    def __call__(self):
        if self.stream is None:
            return None
        try:
            self.stream.write("probe\n")
            self.stream.flush()
            ns = float(self.stream.readline())
        except (OSError, ValueError):
            self.stream = None
            return None
        return ns if ns >= 0 else None


def timed_windows(fn, *, windows=5, window_s=0.5, warmup=3, wait=None, max_other_load=0.3, retries=1,
                  placement=None, settle_s=0.0):
    """Time ``fn`` as NOTES-bench says: ``warmup`` untimed calls, then ``windows`` timed windows
    of about ``window_s`` seconds each (at least 3 calls), every call timed on its own. Before
    each window ``wait()`` (a QuietWaits; None: no wait) waits for a quiet machine and
    ``placement.wait_near()`` (a PlacementProbe; None: none) for the host to have the two CPUs
    near each other, then ``fn`` runs untimed for ``settle_s`` seconds (at least once when
    positive): after the waits' seconds of sleep, W2's first ~25 steps (75 ms) ran at up to
    twice their time, and with 5 calls of warm-up its 0.3 s windows still varied 3.1-3.8 ms
    against 2.9-3.1 after 0.2 s of calls (2026-12-05). A window during which other processes used
    more than ``max_other_load`` cores, or after which the CPUs were far apart, is redone up to
    ``retries`` times and kept flagged after that. Returns a dict: ``seconds`` (the median over
    the windows of each window's median call), ``fastest`` (the fastest window's median),
    ``windows`` (per window: median, calls, other load in cores, load before, the round trip
    before and after in ns, flagged)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(2):
        fn()
    estimate = max((time.perf_counter() - start) / 2, 1e-7)
    calls = max(3, min(200_000, math.ceil(window_s / estimate)))
    results = []
    for _ in range(windows):
        for attempt in range(retries + 1):
            before = wait() if wait else None
            near_before = placement.wait_near() if placement else None
            if settle_s > 0:
                settle_end = time.perf_counter() + settle_s
                fn()
                while time.perf_counter() < settle_end:
                    fn()
            b0, own0, t0 = cpu_busy(), own_cpu(), time.perf_counter()
            times = []
            for _ in range(calls):
                s = time.perf_counter()
                fn()
                times.append(time.perf_counter() - s)
            wall = time.perf_counter() - t0
            other = max(0.0, (cpu_busy() - b0) / HZ - (own_cpu() - own0)) / wall
            near_after = placement.measure() if placement else None
            far = placement is not None and (placement.far(near_before) or placement.far(near_after))
            if other <= max_other_load and not far:
                break
        results.append({"median": statistics.median(times), "calls": calls, "other_load": other,
                        "load_before": before, "round_trip_ns": [near_before, near_after],
                        "flagged": other > max_other_load or far})
    medians = [w["median"] for w in results]
    return {"seconds": statistics.median(medians), "fastest": min(medians), "windows": results}


def worker_arguments(description, variants):
    """The command line every framework worker of benchmarks/compare_peers.py takes."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("variant", choices=variants)
    parser.add_argument("workload")
    parser.add_argument("--mode", choices=["steady", "cold", "profile"], default="steady",
                        help="steady: time the steps; cold: one train step, then print the wall-clock time; "
                             "profile: kernel cycles (kcompiler only)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=0.0,
                        help="seconds of untimed calls after the waits, before each window")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="max seconds per wait for a quiet machine")
    parser.add_argument("--quiet-budget", type=float, default=600.0, help="max seconds of such waits per process")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--placement", default=None, help="the runner's round-trip probe socket (placement.py)")
    parser.add_argument("--far-ns", type=float, default=250.0, help="a round trip above this: the CPUs are far apart")
    parser.add_argument("--placement-wait", type=float, default=30.0,
                        help="max seconds per wait for the CPUs to be near each other")
    parser.add_argument("--placement-budget", type=float, default=120.0, help="max seconds of such waits per process")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (--mode profile)")
    return parser.parse_args()


def window_timer(args):
    """``timed_windows`` with the worker's command-line settings, one wait budget per process."""
    wait = QuietWaits(args.quiet_wait, args.quiet_budget)
    placement = (PlacementProbe.over_socket(args.placement, args.far_ns, args.placement_wait, args.placement_budget)
                 if args.placement else None)
    return lambda fn: timed_windows(fn, windows=args.windows, window_s=args.window_s, warmup=args.warmup,
                                    wait=wait, retries=args.retries, placement=placement,
                                    settle_s=args.settle_s)


def emit(result):
    """The worker's answer: one line the runner looks for."""
    import json
    print("RESULT " + json.dumps(result), flush=True)
