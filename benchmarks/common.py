"""Helpers shared by the benchmark scripts (run them from the repository root or anywhere: the
scripts' folder is on sys.path)."""

from __future__ import annotations

import platform
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """Median wall time in seconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time in seconds of each of `fns` (name -> callable), calling them in turn in every
    repeat so that a machine that speeds up or slows down during the run (a shared VM) shifts them
    all alike and their ratios stay fair. One warm-up call each first."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
