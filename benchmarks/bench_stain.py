"""Stain robustness: model files' scores on their H&E validation images restained as another lab's
slides might be, against the same images as they are. Each image is split into haematoxylin, eosin
and DAB by colour deconvolution (Ruifrok & Johnston's vectors: ``unetseg.data.transforms.restain``,
what the training's stain jitter uses), one stain's amount is scaled, and the image is recomposed.
One row per model, dataset and restaining, with PQ, AP@0.5 and their change against the original
images. Several models are scored in the same run, so their rows compare directly (each on its own
validation images: give models of the same split).

    python benchmarks/bench_stain.py MODEL [MODEL ...] --data DATA [DATA ...]
        [--stains "H 0.6,H 1.5,E 0.6,E 1.5"] [--kind color_brightfield_HE]

MODEL: a model file (``default`` for the bundled one) whose metadata names its validation images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cpu_name

import unetseg
from unetseg import metrics
from unetseg.data.transforms import restain
from unetseg.evaluate import _read_as_named, _summaries

STAINS = {"H": 0, "E": 1, "DAB": 2}


def restained(image: np.ndarray, stain: str, factor: float) -> np.ndarray:
    """An 8-bit RGB(A) image with one stain's amount (H, E or DAB) multiplied by `factor`, as 8-bit
    RGB (alpha dropped)."""
    scale = np.ones(3)
    scale[STAINS[stain]] = factor
    light = restain(image[..., :3] / np.float32(255), scale, np.zeros(3))
    return np.round(np.clip(light, 0, 1) * 255).astype(np.uint8)


def parse_stains(text: str) -> list[tuple[str, float]]:
    """'H 0.7,E 1.3' -> [("H", 0.7), ("E", 1.3)]; a clear error for anything else."""
    out = []
    for item in text.split(","):
        parts = item.split()
        if len(parts) != 2 or parts[0] not in STAINS:
            raise SystemExit(f"--stains: expected items like 'H 0.7' (stain {sorted(STAINS)} and factor), got {item!r}")
        out.append((parts[0], float(parts[1])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--stains", default="H 0.6,H 1.5,E 0.6,E 1.5", help="restainings: 'STAIN FACTOR,...'")
    parser.add_argument("--kind", default="color_brightfield_HE", help="only images of this kind")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    stains = parse_stains(args.stains)
    print(f"CPU: {cpu_name()}")
    print("\n| model | dataset | stain | images | PQ | change | AP@0.5 | change | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        runner = unetseg.Runner(None if model == "default" else model, precision=args.precision)
        val = set(runner.metadata["training_data"]["val_names"])
        samples = [s for s in _read_as_named(args.data, True, val) if s.name in val and s.kind == args.kind]
        base: dict[str, dict] = {}
        for stain, factor in [("as is", 1.0), *stains]:
            rows, t0 = [], time.perf_counter()
            for s in samples:
                image = s.image if stain == "as is" else restained(s.image, stain, factor)
                seg = runner.segment([image])[0]
                rows.append({"dataset": s.dataset, "kind": s.kind, **metrics.image_metrics(s.labels, seg.labels)})
            seconds = time.perf_counter() - t0
            summary = _summaries(rows)
            for dataset in ["all", *sorted({r["dataset"] for r in rows})]:
                group = summary.get(dataset, summary["all"])
                if stain == "as is":
                    base[dataset] = group
                change = "" if stain == "as is" else f"{group['pq'] - base[dataset]['pq']:+.3f}"
                ap_change = "" if stain == "as is" else f"{group['ap@0.50'] - base[dataset]['ap@0.50']:+.3f}"
                label = stain if stain == "as is" else f"{stain} x{factor:g}"
                print(
                    f"| {model} | {dataset} | {label} | {int(group['images'])} | {group['pq']:.3f} | {change} | "
                    f"{group['ap@0.50']:.3f} | {ap_change} | {seconds:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
