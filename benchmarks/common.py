"""Timing helpers shared by the benchmarks: best-of-N medians, optional frameworks."""
import os
import platform
import statistics
import time


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
