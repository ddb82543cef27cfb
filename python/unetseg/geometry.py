"""Object outlines as polygons that GIS tools, QuPath and Fiji accept: valid (shapely's rules: no
self-touching rings) and on the pixels' edges, so a polygon's area is the object's pixel area
within a few percent.

A contour through boundary pixel *centres* (OpenCV's ``findContours``) is invalid wherever an
object has a one-pixel neck or notch (the ring touches itself), and it lies half a pixel inside the
object (a 100-pixel nucleus loses ~18% of its area). Growing the centre contour by half a pixel
with mitred corners puts it on the pixel edges (exactly, for the horizontal and vertical steps of
a pixel boundary; diagonal steps cut a quarter pixel each) and the buffer operation returns valid
polygons; the largest is the object's outline (holes are dropped: one outer boundary per object).
"""

from __future__ import annotations

import numpy as np


def outline_polygon(contour: np.ndarray) -> np.ndarray:
    """The outer boundary polygon (K, 2) float64 (x, y) in pixel-edge coordinates (pixel (r, c) is
    the square [c, c + 1] x [r, r + 1]), closed (first point repeated), counter-clockwise in image
    coordinates (shapely's orientation), of an object whose boundary-pixel centres
    are `contour` (N, 2) (x, y) integers, e.g. from ``cv2.findContours``."""
    return outline_polygons([contour])[0]


def outline_polygons(contours) -> list[np.ndarray]:
    """:func:`outline_polygon` of each contour, with shapely's vectorised operations: slides have
    hundreds of thousands of objects, and a call per object and operation cost 3.5x the time."""
    import shapely

    centres = [np.asarray(c, np.float64).reshape(-1, 2) + 0.5 for c in contours]
    if not centres:
        return []
    sizes = np.array([len(c) for c in centres])
    shapes = np.empty(len(centres), object)
    rings = np.flatnonzero(sizes >= 3)
    if len(rings):
        owner = np.repeat(np.arange(len(rings)), sizes[rings])  # each ring closed by shapely
        points = np.concatenate([centres[i] for i in rings])
        shapes[rings] = shapely.make_valid(shapely.polygons(shapely.linearrings(points, indices=owner)))
        for i in rings[shapely.is_empty(shapes[rings])]:  # a ring of collinear points
            shapes[i] = shapely.multipoints(centres[i])
    for i in np.flatnonzero(sizes == 1):
        shapes[i] = shapely.points(centres[i][0])
    for i in np.flatnonzero(sizes == 2):
        shapes[i] = shapely.linestrings(centres[i])
    grown = shapely.buffer(shapes, 0.5, cap_style="square", join_style="mitre", mitre_limit=2.0)
    # mitres at sharp turns reach past the pixels: the object's box of pixel edges bounds it
    every, starts = np.concatenate(centres), np.r_[0, np.cumsum(sizes)[:-1]]
    low = np.minimum.reduceat(every, starts) - 0.5
    high = np.maximum.reduceat(every, starts) + 0.5
    grown = shapely.intersection(grown, shapely.box(low[:, 0], low[:, 1], high[:, 0], high[:, 1]))
    # the largest polygon of each object is its outline (holes dropped: one outer boundary an object)
    parts, index = shapely.get_parts(grown, return_index=True)
    is_polygon = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    parts, index = parts[is_polygon], index[is_polygon]
    order = np.lexsort((np.arange(len(parts)), -shapely.area(parts), index))  # by object, largest first
    first = np.r_[True, index[order][1:] != index[order][:-1]]
    outer = shapely.orient_polygons(shapely.polygons(shapely.get_exterior_ring(parts[order][first])))
    coords, which = shapely.get_coordinates(shapely.get_exterior_ring(outer), return_index=True)
    return np.split(coords, np.flatnonzero(np.diff(which)) + 1)


def detection_feature(polygon: np.ndarray, label: int, area_px: float) -> dict:
    """A GeoJSON Feature QuPath imports as a detection (File > Import objects): the polygon, the
    label as name and property, the pixel area as a measurement."""
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [np.round(polygon, 3).tolist()]},
        "properties": {
            "objectType": "detection",
            "name": f"nucleus {int(label)}",
            "label": int(label),
            "measurements": {"area_px": float(area_px)},
        },
    }


def write_geojson(file, features) -> None:
    """Writes a FeatureCollection to an open text file, one feature a line (streamed: slides have
    hundreds of thousands)."""
    import json

    file.write('{"type": "FeatureCollection", "features": [\n')
    for n, feature in enumerate(features):
        file.write(("," if n else "") + json.dumps(feature) + "\n")
    file.write("]}\n")


def write_imagej_rois(path, polygons: list[np.ndarray], labels) -> None:
    """An ImageJ ROI set (a .zip Fiji's ROI Manager opens): one polygon ROI per object, named
    ``nucleus <label>``, in sub-pixel coordinates (pixel-edge, as ImageJ's). Written atomically."""
    import roifile

    from .io import atomic_path

    rois = [roifile.ImagejRoi.frompoints(p[:-1], name=f"nucleus {int(k)}") for p, k in zip(polygons, labels)]
    with atomic_path(path) as tmp:
        tmp.unlink()  # roifile appends to an existing zip
        if rois:
            roifile.roiwrite(tmp, rois)
        else:
            import zipfile

            zipfile.ZipFile(tmp, "w").close()


#: The shape measurements of :func:`measure` (skimage.measure.regionprops names).
SHAPE_COLUMNS = (
    "perimeter",
    "equivalent_diameter_area",
    "major_axis_length",
    "minor_axis_length",
    "eccentricity",
    "solidity",
    "orientation",
)
#: Those of :data:`SHAPE_COLUMNS` that are lengths in pixels (the others have no unit).
LENGTH_COLUMNS = ("perimeter", "equivalent_diameter_area", "major_axis_length", "minor_axis_length")


def checked_pixel_size(value, name: str = "pixel_size") -> float | None:
    """A given pixel size (µm per pixel) as a float, None as None; anything but a positive finite
    number is a ValueError naming `name` (the argument or option it came from)."""
    if value is None:
        return None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of µm per pixel, got {value}")
    return float(value)


def micron_columns(columns, pixel_size: float) -> dict[str, np.ndarray]:
    """The µm columns of an object table (a dict of columns or a DataFrame, in pixels) for a pixel
    size in µm: ``area_um2``, and ``centroid_x_um``, ``centroid_y_um`` from the image's top-left
    corner (a pixel's centre is at +0.5)."""
    return {
        "area_um2": np.asarray(columns["area"]) * pixel_size**2,
        "centroid_x_um": (np.asarray(columns["centroid_col"]) + 0.5) * pixel_size,
        "centroid_y_um": (np.asarray(columns["centroid_row"]) + 0.5) * pixel_size,
    }


def measure(labels: np.ndarray, image: np.ndarray, wanted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-object measurements of instance labels (H, W) on their image (H, W[, C]), one value per
    object of ``wanted`` (labels, in that order; default: every label in the image, in order): mean,
    max and integrated (sum) intensity of every channel of the original image
    (``intensity_mean_c0``...) and :data:`SHAPE_COLUMNS`, by skimage.measure.regionprops_table."""
    from skimage.measure import regionprops_table

    intensity = np.atleast_3d(image).astype(np.float64)
    names = [f"intensity_{s}_c{c}" for c in range(intensity.shape[2]) for s in ("mean", "max", "sum")]
    if labels.max(initial=0) == 0:
        return {name: np.zeros(0) for name in (*names, *SHAPE_COLUMNS)}
    props = regionprops_table(
        labels.astype(np.int32),
        intensity,
        properties=("label", "area", "intensity_mean", "intensity_max", *SHAPE_COLUMNS),
    )
    rows = slice(None) if wanted is None else np.searchsorted(props["label"], wanted)  # labels come sorted
    out = {}
    for c in range(intensity.shape[2]):
        mean, peak = props[f"intensity_mean-{c}"][rows], props[f"intensity_max-{c}"][rows]
        out.update(
            {
                f"intensity_mean_c{c}": mean,
                f"intensity_max_c{c}": peak,
                f"intensity_sum_c{c}": mean * props["area"][rows],
            }
        )
    out.update({name: props[name][rows] for name in SHAPE_COLUMNS})
    return out


def measure_in_windows(bboxes: np.ndarray, shape, read_labels, read_image, window=(1024, 4096)) -> dict:
    """:func:`measure` of the objects 1..K of a label image too large to hold, window by window, so
    memory stays that of a window: each object is measured in the window of its bbox's top-left
    corner, read grown by the largest object's height and width so that every object is whole in
    its own. ``bboxes`` (K, 4): min_row, min_col, max_row, max_col (exclusive); ``read_labels(r0,
    r1, c0, c1)`` and ``read_image(r0, r1, c0, c1)``: the final labels and the image of a window."""
    count, (h, w) = len(bboxes), shape
    if count == 0:
        return measure(np.zeros((1, 1), np.int32), read_image(0, 1, 0, 1))
    grow_rows = int((bboxes[:, 2] - bboxes[:, 0]).max())
    grow_cols = int((bboxes[:, 3] - bboxes[:, 1]).max())
    out: dict[str, np.ndarray] = {}
    for r0 in range(0, h, window[0]):
        corner_rows = (bboxes[:, 0] >= r0) & (bboxes[:, 0] < r0 + window[0])
        for c0 in range(0, w, window[1]):
            mine = np.flatnonzero(corner_rows & (bboxes[:, 1] >= c0) & (bboxes[:, 1] < c0 + window[1]))
            if len(mine) == 0:
                continue
            r1, c1 = min(h, r0 + window[0] + grow_rows), min(w, c0 + window[1] + grow_cols)
            columns = measure(read_labels(r0, r1, c0, c1), read_image(r0, r1, c0, c1), wanted=mine + 1)
            for name, values in columns.items():
                out.setdefault(name, np.zeros(count))[mine] = values
    return out


def object_outlines(labels: np.ndarray, bboxes: np.ndarray) -> list[np.ndarray]:
    """:func:`outline_polygons` of every object of instance labels (H, W) (objects 1..K), found in
    its bbox (K, 4) (min_row, min_col, max_row, max_col), in the image's pixel-edge coordinates."""
    import cv2

    outer = []
    for k, (r0, c0, r1, c1) in enumerate(np.asarray(bboxes, np.int64), start=1):
        mask = np.ascontiguousarray(labels[r0:r1, c0:c1] == k).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outer.append(max(contours, key=lambda c: (cv2.contourArea(c), len(c)))[:, 0, :] + (c0, r0))
    return outline_polygons(outer)
