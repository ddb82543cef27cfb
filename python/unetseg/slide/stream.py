"""Labelling a probability map that arrives as blocks, equal to labelling it whole.

A slide's probability map never exists in memory at once, not even a full-width row of it:
:class:`StreamLabeller` takes it block by block in raster order (row bands, each cut into column
blocks fed left to right) and labels each block with the fused ops, together with two *carries*:

- the side carry: the columns of the foreground components that touch the block's right edge, so
  may go on in the band's next block (all rows of the band);
- the band carry: the pixels of the components that touch the band's bottom edge, so may go on in
  the next band (scores of those components only, zero elsewhere: the rest of the map cannot change
  how they are labelled).

A foreground component that touches neither edge is complete, and so are its objects, in both
labellings: plain labelling's objects are the components, and seeded labelling's seeds grow only
inside their component, in an order (nucleus score, then the seed's first pixel in raster order)
that a rectangle cut of the map keeps. Those objects are finished: given a provisional id, their
statistics (in slide coordinates), the flat index of their first pixel and, on request, an outline
polygon. Each block hands back its labels with provisional ids; where it revises pixels an earlier
block handed back (the band carry's), an overlay says which.

The result is the whole-map labelling up to the numbering: numbering by first pixel in raster order
needs every object, so it is a lookup table applied afterwards (:func:`raster_numbering`).

Memory is a block plus the carries: the band carry is as tall as the tallest foreground component
crossing a band edge and the side carry as wide as the widest crossing a block edge (nuclei: tens of
pixels). A component that spans more than ``max_carry`` rows or columns is cut at an edge with a
warning (the only case where the result is not the whole-map labelling).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ops import LABELLING_CHANNELS, label_by, label_stats


@dataclass
class Finished:
    """What one :meth:`StreamLabeller.feed` call completes."""

    row: int
    """slide row of the first row of ``labels``"""
    col: int
    """slide column of the first column of ``labels``"""
    labels: np.ndarray
    """int32 (h, w): labels with provisional ids (0 background; ids that no Finished lists belong to
    objects dropped by min_area or revised later); h or w may be 0"""
    overlay: np.ndarray
    """bool (k, w): the first k rows of ``labels`` revise pixels an earlier call returned; only
    those marked True replace them (see :meth:`paste`)"""
    ids: np.ndarray
    """int64 (n,): provisional ids of the objects finished in this call (increasing over the stream)"""
    first_pixel: np.ndarray
    """int64 (n,): flat slide index (row * W + col) of each object's first pixel in raster order"""
    stats: np.ndarray
    """float64 (n, 8): the ops' statistics (unetseg.STATS_COLUMNS) in slide coordinates"""
    outlines: list[np.ndarray] = field(default_factory=list)
    """per object, when asked for: (n, 2) int32 (x, y) slide coordinates of its outer boundary"""

    def paste(self, out: np.ndarray) -> None:
        """Writes ``labels`` into ``out``, the (h, w) window of the slide's label array at
        (row, col) (an array, a memory map...), keeping the pixels the overlay leaves alone."""
        k = self.overlay.shape[0]
        out[k:] = self.labels[k:]
        if k:
            np.copyto(out[:k], self.labels[:k], where=self.overlay)


class StreamLabeller:
    """Labels a (C, H, W) probability map fed as blocks: C = 1 (nucleus) for plain labelling, C >= 2
    (nucleus, boundary, ...) for seeded. Options as :func:`unetseg.label_stats` /
    :func:`unetseg.seeded_label_stats`. ``outlines=True`` traces each object's outer boundary."""

    def __init__(
        self,
        width: int,
        *,
        labelling: str = "plain",
        threshold: float = 0.5,
        boundary_threshold: float = 0.5,
        connectivity: int = 8,
        min_area: int = 0,
        outlines: bool = False,
        max_carry: int = 8192,
    ):
        if labelling not in LABELLING_CHANNELS:
            raise ValueError(f"labelling must be one of {list(LABELLING_CHANNELS)}, got {labelling!r}")
        if width < 1:
            raise ValueError(f"width must be >= 1 pixel, got {width}")
        self.width = int(width)
        self.labelling = labelling
        self.threshold, self.boundary_threshold = float(threshold), float(boundary_threshold)
        self.connectivity, self.min_area = int(connectivity), int(min_area)
        self.outlines, self.max_carry = outlines, int(max_carry)
        self.start = 0  # slide row of the band carry's first row
        self.end = 0  # slide row after the last band
        self.next_id = 1
        self.done = False
        # The band carry: rows [start, end), the scores of components still open downwards (0 elsewhere).
        self.carry_scores = np.zeros((self.channels, 0, self.width), np.float32)
        self.carry_mask = np.zeros((0, self.width), bool)
        self._begin_band()

    def _begin_band(self) -> None:
        self.col = 0  # columns of the current band fed so far
        self.band_rows, self.last = 0, False
        self.side_start = 0  # slide column of the side carry's first column
        self.side_scores = np.zeros((self.channels, 0, 0), np.float32)
        self.side_labels = np.zeros((0, 0), np.int32)
        self.pieces: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # the next band carry, by block

    @property
    def id_bound(self) -> int:
        """Every provisional id handed out so far is below this (see :func:`raster_numbering`)."""
        return self.next_id

    @property
    def channels(self) -> int:
        return LABELLING_CHANNELS[self.labelling]

    def feed(self, scores, last: bool = False) -> Finished:
        """Takes the next block, (C, h, w) scores (float32/16, uint8 or bool like the ops; extra
        channels are ignored), and returns what it completes. Blocks come in raster order: a band's
        blocks have the same h and go left to right until their widths add up to the map's width (a
        whole band is one block of full width). ``last=True`` on every block of the last band ends
        the stream: every object is then finished."""
        if self.done:
            raise RuntimeError("this StreamLabeller has had its last band; make a new one for another map")
        scores = np.asarray(scores)
        left = self.width - self.col
        if scores.ndim != 3 or scores.shape[0] < self.channels or not 1 <= scores.shape[2] <= left:
            raise ValueError(
                f"a block must be ({self.channels}+, h, w) scores with 1 <= w <= {left} (the columns "
                f"of this band still to come), got shape {scores.shape}"
            )
        if self.col == 0:
            self.band_rows, self.last = scores.shape[1], bool(last)
        elif (scores.shape[1], bool(last)) != (self.band_rows, self.last):
            raise ValueError(
                f"the blocks of a band must have the same rows and `last`: this band's first block "
                f"had {self.band_rows} rows (last={self.last}), got {scores.shape[1]} (last={last})"
            )
        s, e = self.start, self.end + self.band_rows
        hs, c0, c1 = self.side_start, self.col, self.col + scores.shape[2]
        column = np.concatenate([self.carry_scores[:, :, c0:c1], scores[: self.channels]], axis=1, dtype=np.float32)
        buffer = np.concatenate([self.side_scores, column], axis=2) if c0 > hs else column
        if buffer.shape[1] == 0:
            return self._advance(
                Finished(
                    s,
                    hs,
                    np.zeros((0, c1 - hs), np.int32),
                    np.zeros((0, c1 - hs), bool),
                    np.zeros(0, np.int64),
                    np.zeros(0, np.int64),
                    np.zeros((0, 8)),
                ),
                c1,
                e,
            )
        t = torch.from_numpy(buffer)
        component_ids, _, components = label_stats(t[0], self.threshold, self.connectivity, 0)
        component_ids, components = component_ids.numpy(), components.numpy()
        if self.labelling == "plain":  # its objects are the components
            labels, stats = component_ids, components.copy()
        else:
            labels, _, stats = label_by(self.labelling, t, self.threshold, self.boundary_threshold, self.connectivity)
            labels, stats = labels.numpy(), stats.numpy().copy()
        top, left_col, bottom, right = (components[:, j].astype(np.int64) for j in (1, 2, 3, 4))
        # Components within the side carry were labelled by the previous block. Components touching
        # the right edge stay open (unless it is the map's), those touching the bottom edge (unless
        # this is the last band) go to the band carry, the rest are finished.
        is_new = right >= c0 - hs
        is_open = (right == c1 - hs) & (c1 < self.width)
        next_col = int(left_col[is_open].min()) + hs if is_open.any() else c1
        if c1 - next_col > self.max_carry:
            self._warn(f"columns {next_col}..{c1}", "columns", f"column {c1}")
            is_open[:] = False
            next_col = c1
        down = is_new & ~is_open & (bottom == e - s) & (not self.last)
        tall = down & (bottom - top > self.max_carry)
        if tall.any():
            self._warn(f"rows {int(top[tall].min()) + s}..{e}", "rows", f"row {e}")
            down &= ~tall
        finish_component = is_new & ~is_open & ~down
        first_rows, first_cols = _first_pixels(labels, stats)
        if self.labelling == "seeded" and len(stats):
            # Each object lies in one component: read it at the object's first pixel.
            finish = finish_component[component_ids[first_rows, first_cols] - 1]
        else:
            finish = finish_component
        keep = finish & (stats[:, 0] >= self.min_area)
        if down.any():
            self._carry_down(buffer, component_ids, down, top, left_col, right, s, hs)
        own = next_col - hs
        tail = component_ids[:, own:]  # (before the shift below: plain labels are component_ids)
        reopened = is_open[np.maximum(tail, 1) - 1] & (tail > 0) if is_open.any() else None
        # Provisional ids are the block's labels shifted past every id handed out before: no lookup
        # over the block's pixels. Objects not kept here (under min_area, finished by an earlier
        # block and labelled again in a carry, or still open) keep ids that no Finished lists, so
        # raster_numbering(..., bound=id_bound) sends them to 0; open ones are revised later.
        offset = self.next_id - 1
        ids = np.flatnonzero(keep).astype(np.int64) + 1 + offset
        self.next_id += len(stats)
        provisional = labels  # the op's fresh output, shifted in place
        np.add(provisional, np.int32(offset), out=provisional, where=provisional > 0)
        if c0 > hs:  # the side carry's finished objects keep the ids they were given
            head = provisional[:, : c0 - hs]
            np.copyto(head, self.side_labels, where=self.side_labels > 0)
        outlines = (
            [
                self._outline(provisional, i, box, s, hs)
                for i, box in zip(ids.tolist(), stats[keep, 1:5].astype(np.int64).tolist())
            ]
            if self.outlines
            else []
        )
        kept = stats[keep]
        kept[:, [1, 3, 5]] += s
        kept[:, [2, 4, 6]] += hs
        first = (first_rows[keep] + s) * self.width + first_cols[keep] + hs
        finished = Finished(s, hs, provisional[:, :own], self.carry_mask[:, hs:next_col], ids, first, kept, outlines)
        side = provisional[:, own:].copy()
        if reopened is not None:  # labelled again by the next block
            side[reopened] = 0
        self.side_scores, self.side_labels = buffer[:, :, own:].copy(), side
        return self._advance(finished, c1, e, next_col)

    def _carry_down(self, buffer, component_ids, down, top, left_col, right, s, hs) -> None:
        """Keeps the pixels of the components open downwards (bounding box, mask, scores) for the band carry."""
        r0, a, b = int(top[down].min()), int(left_col[down].min()), int(right[down].max())
        chosen = np.concatenate([[False], down])
        mask = chosen[component_ids[r0:, a:b]]
        self.pieces.append((r0 + s, a + hs, mask, np.where(mask, buffer[:, r0:, a:b], np.float32(0))))

    def _advance(self, finished: Finished, c1: int, e: int, next_col: int | None = None) -> Finished:
        """Moves past a block; after a band's last block, the pieces become the band carry."""
        self.col, self.side_start = c1, c1 if next_col is None else next_col
        if c1 < self.width:
            return finished
        start = min((p[0] for p in self.pieces), default=e)
        self.carry_scores = np.zeros((self.channels, e - start, self.width), np.float32)
        self.carry_mask = np.zeros((e - start, self.width), bool)
        for r, c, mask, scores in self.pieces:
            rows, cols = slice(r - start, e - start), slice(c, c + mask.shape[1])
            self.carry_mask[rows, cols] |= mask
            np.copyto(self.carry_scores[:, rows, cols], scores, where=mask)
        self.start, self.end, self.done = start, e, self.last
        self._begin_band()
        return finished

    def _warn(self, span: str, what: str, cut: str) -> None:
        warnings.warn(
            f"a foreground region spans {span} (more than max_carry={self.max_carry} {what}); it is cut at "
            f"{cut}, so objects crossing it are split. Raise the threshold or max_carry.",
            RuntimeWarning,
            stacklevel=3,
        )

    @staticmethod
    def _outline(labels: np.ndarray, k: int, box: list[int], row0: int, col0: int) -> np.ndarray:
        """The outer boundary of object k: its boundary pixels' centres, OpenCV's border following
        (unetseg.geometry.outline_polygons makes the valid pixel-edge polygon of it when writing)."""
        import cv2

        r0, c0, r1, c1 = box
        mask = (labels[r0:r1, c0:c1] == k).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if len(contours) > 1:
            contours = [max(contours, key=lambda c: (cv2.contourArea(c), len(c)))]
        contour = contours[0][:, 0, :] if contours else np.zeros((1, 2), np.int64)
        return (contour + (c0 + col0, r0 + row0)).astype(np.int32)

    def state_dict(self) -> dict:
        """Everything needed to go on after an interruption between bands (see :meth:`load_state_dict`)."""
        if self.col:
            raise RuntimeError(
                f"state_dict is taken between bands; this band has had {self.col} of {self.width} columns"
            )
        return {
            "start": self.start,
            "end": self.end,
            "next_id": self.next_id,
            "done": self.done,
            "carry_scores": self.carry_scores,
            "carry_mask": self.carry_mask,
        }

    def load_state_dict(self, state: dict) -> None:
        self.start, self.end = int(state["start"]), int(state["end"])
        self.next_id, self.done = int(state["next_id"]), bool(state["done"])
        self.carry_scores = np.asarray(state["carry_scores"], np.float32)
        self.carry_mask = np.asarray(state["carry_mask"], bool)
        self._begin_band()


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
