"""Where the label op's time goes: each step of the torch-free core (csrc/ops/cpu/ccl.h) timed on its
own, on bench_label's nuclei-like map, against a streamed copy of the map (the memory floor).

    python benchmarks/bench_label_phases.py [--size 4096] [--threads 2] [--repeats 15]

Compiles benchmarks/label_phases.cpp with the C++ compiler (`CXX`, default g++) as the package is
built (-O3, the baseline ISA, the vector steps chosen at run time) and runs it: std::thread stands
in for torch's pool, two strips a thread as the op plans them. The steps' times add up to about
the op's (`bench_label.py`), less the call's own overhead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import cpu_name

from unetseg.data import synthetic_nuclei

HERE = Path(__file__).resolve().parent


def build(folder: Path) -> Path:
    exe = folder / "label_phases"
    compiler = os.environ.get("CXX", "g++")
    flags = ["-O3", "-DNDEBUG", "-std=c++17", "-pthread"]
    subprocess.run([compiler, *flags, str(HERE / "label_phases.cpp"), "-o", str(exe)], check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="side of the square map (a multiple of 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.size % 64:
        parser.error(f"--size must be a multiple of 64, got {args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        exe = build(folder)
        path = folder / "map.f32"
        synthetic_nuclei((args.size, args.size), seed=args.size).probability.astype(np.float32).tofile(path)
        run = [str(exe), str(path), str(args.size), str(args.size), str(args.threads), str(args.repeats)]
        lines = subprocess.run(run, check=True, capture_output=True, text=True).stdout.splitlines()
    rows = dict(line.split("\t") for line in lines)
    floor = float(rows.pop("memory floor (streamed copy, f32 in, i32 out)"))
    runs, objects = rows.pop("runs"), rows.pop("objects")
    steps = {name: float(ms) for name, ms in rows.items()}
    op = sum(ms for name, ms in steps.items() if not name.startswith("1 "))  # the scan includes step 1
    print(f"# {cpu_name()}, {args.threads} threads, {args.size}x{args.size}, {runs} runs, {objects} objects")
    print("| step | ms | of the op | vs floor |\n|---|---:|---:|---:|")
    for name, ms in steps.items():
        share = "(in the scan)" if name.startswith("1 ") else f"{ms / op:.0%}"
        print(f"| {name[2:]} | {ms:.2f} | {share} | {ms / floor:.2f}x |")
    print(f"| steps 2-6 | {op:.2f} | 100% | {op / floor:.2f}x |")
    print(f"| memory floor (streamed copy) | {floor:.2f} |  | 1.00x |")


if __name__ == "__main__":
    main()
