"""Scale robustness: a model file's scores on its validation images resized by several factors
(images bilinear, labels nearest), segmented with ``diameter="auto"``, against the same images at
1x; one row per dataset and factor, with the AP@0.5 change and the diameter estimates' error.

    python benchmarks/bench_scale.py MODEL DATA [DATA ...] [--scales 0.5,1,2,3] [--kind gray_fluorescence]

MODEL: a model file (``default`` for the bundled one) whose metadata names its validation images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cpu_name

import unetseg
from unetseg import metrics
from unetseg.data.transforms import median_diameter, rescale
from unetseg.evaluate import _read_as_named, _summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data", nargs="+")
    parser.add_argument("--scales", default="0.5,1,2,3")
    parser.add_argument("--kind", help="only images of this kind (e.g. gray_fluorescence)")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    runner = unetseg.Runner(None if args.model == "default" else args.model, precision=args.precision)
    val = set(runner.metadata["training_data"]["val_names"])
    samples = _read_as_named(args.data, True, val)  # one dataset of a multi-dataset model: DATASET/NAME
    samples = [s for s in samples if s.name in val and (args.kind is None or s.kind == args.kind)]
    print(f"CPU: {cpu_name()}; {runner!r}, precision {runner.precision}; {len(samples)} validation images")
    print("\n| dataset | scale | images | AP@0.5 | change vs 1x | DSB score | diameter error (median) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}
    scales = sorted((float(s) for s in args.scales.split(",")), key=lambda s: s != 1)  # 1x first: the baseline
    for scale in scales:
        rows, errors, t0 = [], {}, time.perf_counter()
        for s in samples:
            image, labels = (s.image, s.labels) if scale == 1 else rescale(np.atleast_3d(s.image), s.labels, scale)
            seg = runner.segment([image])[0]
            rows.append(
                {"image": s.name, "dataset": s.dataset, "kind": s.kind, **metrics.image_metrics(labels, seg.labels)}
            )
            true = median_diameter(labels)
            if np.isfinite(true) and true > 0:
                errors.setdefault(s.dataset, []).append(abs(seg.diameter / true - 1))
        seconds = time.perf_counter() - t0
        summary = _summaries(rows)
        for dataset in sorted({r["dataset"] for r in rows}):
            group = summary.get(dataset, summary["all"])
            ap = group["ap@0.50"]
            if scale == 1:
                base[dataset] = ap
            change = f"{ap - base[dataset]:+.3f}" if dataset in base else ""
            error = f"{100 * np.median(errors.get(dataset, [np.nan])):.0f}%"
            print(
                f"| {dataset} | {scale:g}x | {int(group['images'])} | {ap:.3f} | {change} | "
                f"{group['dsb_score']:.3f} | {error} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
