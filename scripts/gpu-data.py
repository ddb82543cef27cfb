"""Packs the training sets of ../shared/data into one file small enough to travel with the checkout to
a GPU machine without internet access (the checkout and the data: 64 MiB in all), and unpacks it there into the
DSB layout `unetseg train` reads.

    python scripts/gpu-data.py pack [--data ../shared/data] [--out device_data/train.npz] [--max-mib 24]
    python scripts/gpu-data.py unpack device_data/train.npz /tmp/gpu-data

Packing keeps every image and its name, kind and group (so `unetseg train --seed 0` draws the same
validation split as on the full data) and makes them smaller in three ways, each said in the file:
an image whose nuclei are larger than the canonical 20 px is shrunk towards that (training would
shrink it the same way: `--diameter 20`, INTER_AREA), gray images saved in colour keep their one channel,
and 8-bit images take the smaller of PNG and JPEG at the highest quality (90, 85, ... 50) at which
everything fits `--max-mib`; labels are kept exactly (uint16, xz). Pairs whose sizes differ are
left out, as `--skip-invalid` does.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
from pathlib import Path

import cv2
import numpy as np

from unetseg.data.transforms import median_diameter, rescale
from unetseg.segment import signal_channel

CANONICAL = 20.0
QUALITIES = (90, 85, 80, 75, 70, 65, 60, 55, 50)


def _pairs(root: Path):
    """(dataset, manifest text, [(id, image, labels)]) of each dataset folder under root."""
    for folder in sorted(p for p in root.iterdir() if (p / "images").is_dir() and (p / "labels").is_dir()):
        manifest = (folder / "manifest.csv").read_text() if (folder / "manifest.csv").exists() else ""
        items = []
        for path in sorted((folder / "images").iterdir()):
            label_path = next((folder / "labels").glob(path.stem + ".*"), None)
            if label_path is None:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if image is None or labels is None or image.shape[:2] != labels.shape[:2]:
                print(
                    f"left out {folder.name}/{path.name}: unreadable, or its labels are another size", file=sys.stderr
                )
                continue
            items.append((path.stem, _smaller(_one_channel_if_gray(image), labels)))
        yield folder.name, manifest, items


def _one_channel_if_gray(image: np.ndarray) -> np.ndarray:
    """Alpha dropped; a gray image saved in colour as the one channel that holds it, as training
    reads it anyway (:func:`unetseg.segment.signal_channel`)."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    k = signal_channel(image)
    return image if k is None else image[..., k]


def _smaller(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk towards the canonical nucleus diameter when its nuclei are larger (never enlarged)."""
    d = median_diameter(labels)
    factor = min(1.0, max(1 / 8, CANONICAL / d)) if np.isfinite(d) else 1.0
    if factor == 1.0:
        return image, labels
    resized, labels = rescale(image if image.ndim == 3 else image[..., None], labels, factor)
    return (resized if image.ndim == 3 else resized[..., 0]), labels


def _encode(image: np.ndarray, quality: int) -> tuple[str, bytes]:
    png = cv2.imencode(".png", image)[1].tobytes()
    if image.dtype != np.uint8:
        return ".png", png
    jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    return (".jpg", jpg) if len(jpg) < len(png) else (".png", png)


def pack(data: Path, out: Path, max_mib: float) -> None:
    sets = list(_pairs(data))
    labels = {
        (name, stem): lzma.compress(lab.astype(np.uint16).tobytes(), preset=9)
        for name, _, items in sets
        for stem, (_, lab) in items
    }
    for quality in QUALITIES:
        arrays, index = {}, {"quality": quality, "canonical_diameter": CANONICAL, "sets": {}}
        for name, manifest, items in sets:
            entries = []
            for stem, (image, lab) in items:
                suffix, encoded = _encode(image, quality)
                arrays[f"{name}|{stem}|image"] = np.frombuffer(encoded, np.uint8)
                arrays[f"{name}|{stem}|labels"] = np.frombuffer(labels[name, stem], np.uint8)
                entries.append({"id": stem, "suffix": suffix, "shape": list(lab.shape)})
            index["sets"][name] = {"manifest": manifest, "images": entries}
        size = sum(a.nbytes for a in arrays.values()) / 2**20
        print(f"JPEG quality {quality}: {size:.1f} MiB", file=sys.stderr)
        if size <= max_mib:
            break
    else:
        raise SystemExit(f"the data does not fit {max_mib} MiB even at JPEG quality {QUALITIES[-1]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, index=np.frombuffer(json.dumps(index).encode(), np.uint8), **arrays)
    out.write_bytes(buffer.getvalue())
    count = sum(len(s["images"]) for s in index["sets"].values())
    print(f"{out}: {count} images of {len(sets)} sets, {out.stat().st_size / 2**20:.1f} MiB, JPEG quality {quality}")


def unpack(packed: Path, root: Path) -> None:
    with np.load(packed) as z:
        index = json.loads(z["index"].tobytes())
        for name, entry in index["sets"].items():
            folder = root / name
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "labels").mkdir(parents=True, exist_ok=True)
            if entry["manifest"]:
                (folder / "manifest.csv").write_text(entry["manifest"])
            for item in entry["images"]:
                stem = item["id"]
                (folder / "images" / (stem + item["suffix"])).write_bytes(z[f"{name}|{stem}|image"].tobytes())
                raw = lzma.decompress(z[f"{name}|{stem}|labels"].tobytes())
                labels = np.frombuffer(raw, np.uint16).reshape(item["shape"])
                cv2.imwrite(str(folder / "labels" / (stem + ".png")), labels)
    print(f"{root}: {', '.join(index['sets'])} (JPEG quality {index['quality']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, default=Path("device_data/train.npz"))
    p.add_argument("--max-mib", type=float, default=24.0)
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data, args.out, args.max_mib)
    else:
        unpack(args.packed, args.root)


if __name__ == "__main__":
    main()
