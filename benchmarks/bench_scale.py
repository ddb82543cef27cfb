"""Scale robustness: a model file's scores on its validation images resized by several factors
(images bilinear, labels nearest), segmented with ``diameter="auto"``, against the same images at
1x; one row per dataset and factor, with the AP@0.5 change and the diameter estimates' error.
``--true-diameter`` also segments every image at its labels' median diameter (what a perfect
estimate would give), so a row's miss splits into the estimate's share and the network's.

    python benchmarks/bench_scale.py MODEL DATA [DATA ...] [--scales 0.5,1,2,3] [--kind gray_fluorescence]
        [--true-diameter]

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
    parser.add_argument(
        "--true-diameter",
        action="store_true",
        help="also segment each image at its labels' median diameter (doubles the time)",
    )
    args = parser.parse_args()
    runner = unetseg.Runner(None if args.model == "default" else args.model, precision=args.precision)
    # the diameters the runner can resize to its canonical one
    diameter_range = (runner.diameter / unetseg._C.MAX_RESCALE, runner.diameter / unetseg._C.MIN_RESCALE)
    val = set(runner.metadata["training_data"]["val_names"])
    samples = _read_as_named(args.data, True, val)  # one dataset of a multi-dataset model: DATASET/NAME
    samples = [s for s in samples if s.name in val and (args.kind is None or s.kind == args.kind)]
    print(f"CPU: {cpu_name()}; {runner!r}, precision {runner.precision}; {len(samples)} validation images")
    oracle = " AP@0.5 at the true diameter |" if args.true_diameter else ""
    columns = "| dataset | scale | images | AP@0.5 | change vs 1x | DSB score | diameter error (median) |"
    print(f"\n{columns}{oracle} seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.true_diameter else "") + "---:|")
    base: dict[str, float] = {}
    scales = sorted((float(s) for s in args.scales.split(",")), key=lambda s: s != 1)  # 1x first: the baseline
    for scale in scales:
        rows, true_rows, errors, t0 = [], [], {}, time.perf_counter()
        for s in samples:
            image, labels = (s.image, s.labels) if scale == 1 else rescale(np.atleast_3d(s.image), s.labels, scale)
            seg = runner.segment([image])[0]
            rows.append(
                {"image": s.name, "dataset": s.dataset, "kind": s.kind, **metrics.image_metrics(labels, seg.labels)}
            )
            true = median_diameter(labels)
            has_nuclei = np.isfinite(true) and true > 0
            if has_nuclei:
                errors.setdefault(s.dataset, []).append(abs(seg.diameter / true - 1))
            if args.true_diameter:  # an image without labelled nuclei has no true diameter: its estimate stands
                given = seg
                if has_nuclei:
                    given = runner.segment([image], diameter=float(np.clip(true, *diameter_range)))[0]
                true_rows.append({"dataset": s.dataset, "kind": s.kind, **metrics.image_metrics(labels, given.labels)})
        seconds = time.perf_counter() - t0
        summary, true_summary = _summaries(rows), _summaries(true_rows) if true_rows else {}
        for dataset in sorted({r["dataset"] for r in rows}):
            group = summary.get(dataset, summary["all"])
            ap = group["ap@0.50"]
            if scale == 1:
                base[dataset] = ap
            change = f"{ap - base[dataset]:+.3f}" if dataset in base else ""
            error = f"{100 * np.median(errors.get(dataset, [np.nan])):.0f}%"
            given = f" {true_summary.get(dataset, true_summary['all'])['ap@0.50']:.3f} |" if true_summary else ""
            print(
                f"| {dataset} | {scale:g}x | {int(group['images'])} | {ap:.3f} | {change} | "
                f"{group['dsb_score']:.3f} | {error} |{given} {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
