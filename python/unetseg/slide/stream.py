"""Labelling a probability map that arrives as row bands, equal to labelling it whole.

A slide's probability map never exists in memory at once: :class:`StreamLabeller` takes it band by
band (top to bottom) and labels each band with the fused ops, together with the *carry*: the rows
of the foreground components that touch the band's bottom edge and so may go on in the next band.
A foreground component that does not touch the bottom edge is complete, and so are its objects, in
both labellings: plain labelling's objects are the components, and seeded labelling's seeds grow
only inside their component. Those objects are finished: given a provisional id, their statistics
(in slide coordinates), the flat index of their first pixel and, on request, an outline polygon.
Rows above the carry are complete and are handed back with provisional ids.

The result is the whole-map labelling up to the numbering: numbering by first pixel in raster order
needs every object, so it is a lookup table applied afterwards (:func:`raster_numbering`).

Memory is the band plus the carry; the carry is bounded by the tallest foreground component crossing
a band edge (nuclei: tens of rows). A component taller than ``max_carry`` rows is cut at a band
edge with a warning (the only case where the result is not the whole-map labelling).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ops import label_stats, seeded_label_stats


@dataclass
class Finished:
    """What one :meth:`StreamLabeller.feed` call completes."""

    row: int
    """slide row of the first row of ``labels``"""
    labels: np.ndarray
    """int32 (h, W): complete rows with provisional ids (0 background; ids that no Finished lists
    belong to objects dropped by min_area); h may be 0"""
    ids: np.ndarray
    """int64 (k,): provisional ids of the objects finished in this call (increasing over the stream)"""
    first_pixel: np.ndarray
    """int64 (k,): flat slide index (row * W + col) of each object's first pixel in raster order"""
    stats: np.ndarray
    """float64 (k, 8): the ops' statistics (unetseg.STATS_COLUMNS) in slide coordinates"""
    outlines: list[np.ndarray] = field(default_factory=list)
    """per object, when asked for: (n, 2) int32 (x, y) slide coordinates of its outer boundary"""


class StreamLabeller:
    """Labels row bands of a (C, H, W) probability map: C = 1 (nucleus) for plain labelling, C >= 2
    (nucleus, boundary, ...) for seeded. Options as :func:`unetseg.label_stats` /
    :func:`unetseg.seeded_label_stats`. ``outlines=True`` traces each object's outer boundary."""

    def __init__(self, width: int, *, labelling: str = "plain", threshold: float = 0.5,
                 boundary_threshold: float = 0.5, connectivity: int = 8, min_area: int = 0,
                 outlines: bool = False, max_carry: int = 8192):
        if labelling not in ("plain", "seeded"):
            raise ValueError(f"labelling must be 'plain' or 'seeded', got {labelling!r}")
        if width < 1:
            raise ValueError(f"width must be >= 1 pixel, got {width}")
        self.width = int(width)
        self.labelling = labelling
        self.threshold, self.boundary_threshold = float(threshold), float(boundary_threshold)
        self.connectivity, self.min_area = int(connectivity), int(min_area)
        self.outlines, self.max_carry = outlines, int(max_carry)
        self.start = 0  # slide row of the carry's first row
        self.end = 0  # slide row after the last row fed
        self.next_id = 1
        self.done = False
        self.carry_scores = np.zeros((self.channels, 0, self.width), np.float32)  # rows of open components
        self.carry_labels = np.zeros((0, self.width), np.int32)

    @property
    def id_bound(self) -> int:
        """Every provisional id handed out so far is below this (see :func:`raster_numbering`)."""
        return self.next_id

    @property
    def channels(self) -> int:
        return 2 if self.labelling == "seeded" else 1

    def feed(self, scores, last: bool = False) -> Finished:
        """Takes the next band, (C, h, W) scores (float32/16, bf16, uint8 or bool like the ops; extra
        channels are ignored), and returns what it completes. ``last=True`` ends the stream: every
        object is then finished and every row returned."""
        if self.done:
            raise RuntimeError("this StreamLabeller has had its last band; make a new one for another map")
        scores = np.asarray(scores)
        if scores.ndim != 3 or scores.shape[0] < self.channels or scores.shape[2] != self.width:
            raise ValueError(f"a band must be ({self.channels}+, h, {self.width}) scores, got shape {scores.shape}")
        scores = scores[: self.channels]
        buffer = np.concatenate([self.carry_scores, scores], axis=1) if self.carry_scores.shape[1] else scores
        s, old_end, e = self.start, self.end, self.end + scores.shape[1]
        if buffer.shape[1] == 0:
            return self._finish_rows(s, e, last)
        t = torch.from_numpy(np.ascontiguousarray(buffer))
        component_ids, _, components = label_stats(t[0], self.threshold, self.connectivity, 0)
        component_ids, components = component_ids.numpy(), components.numpy()
        if self.labelling == "seeded":
            labels, _, stats = seeded_label_stats(t, self.threshold, self.boundary_threshold, self.connectivity, 0)
            labels, stats = labels.numpy(), stats.numpy().copy()
        else:
            labels, stats = component_ids, components.copy()
        # Components touching the bottom edge stay open (unless this is the last band); components
        # entirely above the previous band's last row were finished by an earlier call.
        top, bottom = components[:, 1].astype(np.int64) + s, components[:, 3].astype(np.int64) + s
        is_new = bottom >= old_end if old_end > s else np.ones(len(components), bool)
        is_open = (bottom == e) & (not last)
        next_start = int(top[is_open].min()) if is_open.any() else e
        if e - next_start > self.max_carry:
            warnings.warn(
                f"a foreground region spans rows {next_start}..{e} (more than max_carry={self.max_carry} rows); "
                f"it is cut at row {e}, so objects crossing that row are split. Raise the threshold or max_carry.",
                RuntimeWarning, stacklevel=2)
            is_open[:] = False
            next_start = e
        finish_component = is_new & ~is_open
        first_rows, first_cols = _first_pixels(labels, stats)
        if self.labelling == "seeded" and len(stats):
            # Each object lies in one component: read it at the object's first pixel.
            finish = finish_component[component_ids[first_rows, first_cols] - 1]
        else:
            finish = finish_component
        keep = finish & (stats[:, 0] >= self.min_area)
        # Provisional ids are the band's labels shifted past every id handed out before: no lookup
        # over the band's pixels. Objects not kept here (under min_area, or finished by an earlier
        # band and labelled again in the carry) keep ids that no Finished lists, so
        # raster_numbering(..., bound=id_bound) sends them to 0.
        tail = component_ids[next_start - s :]
        reopened = is_open[tail - 1] & (tail > 0) if is_open.any() else None  # labelled again next band
        offset = self.next_id - 1
        ids = np.flatnonzero(keep).astype(np.int64) + 1 + offset
        self.next_id += len(stats)
        provisional = labels  # the op's fresh output, shifted in place
        np.add(provisional, np.int32(offset), out=provisional, where=provisional > 0)
        c = self.carry_labels.shape[0]
        if c:  # the carry's finished objects keep the ids they were given
            head = provisional[:c]
            np.copyto(head, self.carry_labels, where=self.carry_labels > 0)
        outlines = ([self._outline(provisional, i, box, s) for i, box in
                     zip(ids.tolist(), stats[keep, 1:5].astype(np.int64).tolist())] if self.outlines else [])
        kept = stats[keep]
        kept[:, [1, 3, 5]] += s
        first = (first_rows[keep] + s) * self.width + first_cols[keep]
        finished = Finished(s, provisional[: next_start - s], ids, first, kept, outlines)
        carry = provisional[next_start - s :].copy()
        if reopened is not None:
            carry[reopened] = 0
        self.carry_labels = carry
        self.carry_scores = buffer[:, next_start - s :]
        self.start, self.end, self.done = next_start, e, last
        return finished

    def _finish_rows(self, s: int, e: int, last: bool) -> Finished:
        self.end, self.done = e, last
        empty = np.zeros((0, self.width), np.int32)
        return Finished(s, empty, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 8)))

    @staticmethod
    def _outline(labels: np.ndarray, k: int, box: list[int], row0: int) -> np.ndarray:
        """The outer boundary of object k (pixel centres, OpenCV's border following), or the corners
        of its bounding box's pixels when it is too thin to have an area."""
        import cv2

        r0, c0, r1, c1 = box
        mask = (labels[r0:r1, c0:c1] == k).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if len(contours) > 1:
            contours = [max(contours, key=lambda c: (cv2.contourArea(c), len(c)))]
        contour = contours[0][:, 0, :] if contours else None
        if contour is None or len(contour) < 3:
            contour = np.array([[0, 0], [c1 - c0 - 1, 0], [c1 - c0 - 1, r1 - r0 - 1], [0, r1 - r0 - 1]])
        return (contour + (c0, r0 + row0)).astype(np.int32)

    def state_dict(self) -> dict:
        """Everything needed to go on after an interruption (see :meth:`load_state_dict`)."""
        return {"start": self.start, "end": self.end, "next_id": self.next_id, "done": self.done,
                "carry_scores": self.carry_scores, "carry_labels": self.carry_labels}

    def load_state_dict(self, state: dict) -> None:
        self.start, self.end = int(state["start"]), int(state["end"])
        self.next_id, self.done = int(state["next_id"]), bool(state["done"])
        self.carry_scores = np.asarray(state["carry_scores"])
        self.carry_labels = np.asarray(state["carry_labels"])


def _first_pixels(labels: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each object's first pixel in raster order: the leftmost pixel of object k
    in its bounding box's top row, found in a window of the bbox's width (vectorised for the usual
    narrow objects)."""
    rows, c0, c1 = (stats[:, j].astype(np.int64) for j in (1, 2, 4))
    keys = np.arange(1, len(stats) + 1, dtype=labels.dtype)
    cols = c0.copy()
    narrow = np.flatnonzero(c1 - c0 <= 64)
    if narrow.size:
        window = np.minimum(c0[narrow, None] + np.arange(int((c1 - c0)[narrow].max())), labels.shape[1] - 1)
        cols[narrow] += np.argmax(labels[rows[narrow, None], window] == keys[narrow, None], axis=1)
    for i in np.flatnonzero(c1 - c0 > 64):
        cols[i] += int(np.argmax(labels[rows[i], c0[i] : c1[i]] == keys[i]))
    return rows, cols


def raster_numbering(ids: np.ndarray, first_pixel: np.ndarray, bound: int = 0) -> np.ndarray:
    """The lookup table provisional id -> final label (1..K in raster order of first pixels; 0 -> 0,
    and so does every id below ``bound`` that ``ids`` does not list: pass the labeller's id_bound)."""
    lut = np.zeros(max(int(ids.max(initial=0)) + 1, bound), np.int32)
    lut[ids[np.argsort(first_pixel, kind="stable")]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut
