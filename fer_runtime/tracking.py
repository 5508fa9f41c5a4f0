"""Face tracking between detections: greedy IoU matching of boxes to tracks, and EMA smoothing of probabilities."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer_runtime.faces import Box


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def ema(previous: np.ndarray | None, current: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average: ``smoothing * previous + (1 - smoothing) * current`` (``current`` if no previous)."""
    if previous is None:
        return np.asarray(current, np.float32).copy()
    return (smoothing * previous + (1.0 - smoothing) * current).astype(np.float32)


@dataclass
class Track:
    """One tracked face: stable id, last box, smoothed class probabilities, detections missed in a row."""

    id: int
    box: Box
    smoothed: np.ndarray | None = None
    missed: int = 0


class IouTracker:
    """Assign stable ids to detected boxes across frames.

    Each :meth:`update` matches the new boxes to live tracks greedily by IoU (highest first, at least
    ``iou_threshold``); unmatched boxes start new tracks; a track missed by more than ``max_missed``
    consecutive updates is dropped. Ids are never reused.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 2) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold, self.max_missed = float(iou_threshold), int(max_missed)
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, boxes: Sequence[Box]) -> list[Track]:
        """Match ``boxes`` to tracks; return the track of each box, in the order of ``boxes``."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        owner: dict[int, Track] = {}
        used: set[int] = set()
        for score, ti, bi in pairs:
            if score < self.iou_threshold:
                break
            if ti in used or bi in owner:
                continue
            used.add(ti)
            owner[bi] = self.tracks[ti]
        for ti, t in enumerate(self.tracks):
            t.missed = 0 if ti in used else t.missed + 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        out = []
        for bi, b in enumerate(boxes):
            t = owner.get(bi)
            if t is None:
                t = Track(self._next_id, b)
                self._next_id += 1
                self.tracks.append(t)
            t.box = b
            out.append(t)
        return out

    def visible(self) -> list[Track]:
        """Tracks matched by the latest update (their boxes are current)."""
        return [t for t in self.tracks if t.missed == 0]

    def reset(self) -> None:
        """Forget all tracks (ids keep counting up)."""
        self.tracks = []
