"""Draw frame results onto a video frame: a box and ``#track Label 87%`` per face, and a bar chart of its smoothed probabilities."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fer_runtime.frames import FaceResult

BAR_WIDTH = 90  # pixels for probability 1.0
BAR_HEIGHT = 11
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# A few well-separated BGR colours, one per track id (cycled).
_PALETTE = ((0, 200, 255), (255, 160, 0), (80, 220, 80), (200, 80, 255), (60, 60, 240), (240, 240, 60))


def track_color(track: int) -> tuple[int, int, int]:
    """The drawing colour of a track id."""
    return _PALETTE[track % len(_PALETTE)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    for c, t in (((0, 0, 0), 3), (color, 1)):  # outlined, readable on any background
        cv2.putText(img, text, org, _FONT, scale, c, t, cv2.LINE_AA)


def draw_results(frame: np.ndarray, results: Sequence[FaceResult], labels: Sequence[str]) -> np.ndarray:
    """A BGR uint8 copy of ``frame`` with every face's box, smoothed label and probability bar chart.

    The chart sits under the box, or beside it when there is no room below.
    """
    img = frame.copy() if frame.ndim == 3 and frame.shape[2] == 3 else cv2.cvtColor(
        frame, cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_BGRA2BGR)
    height, width = img.shape[:2]
    chart_w, chart_h = BAR_WIDTH + 70, len(labels) * (BAR_HEIGHT + 3)
    for r in results:
        color = track_color(r.track)
        b = r.box
        cv2.rectangle(img, (b.x, b.y), (b.x + b.w - 1, b.y + b.h - 1), color, 2)
        _text(img, f"#{r.track} {r.label} {r.confidence:.0%}", (b.x + 2, max(14, b.y - 6)), 0.55, color)
        # the chart goes under the box; if there is no room, beside it (right, else left)
        if b.y + b.h + 4 + chart_h <= height:
            x0, y0 = min(max(0, b.x), max(0, width - chart_w)), b.y + b.h + 4
        else:
            x0 = b.x + b.w + 6 if b.x + b.w + 6 + chart_w <= width else max(0, b.x - 6 - chart_w)
            y0 = max(0, min(b.y, height - chart_h))
        for k, (name, p) in enumerate(zip(labels, r.smoothed)):
            y = y0 + k * (BAR_HEIGHT + 3)
            cv2.rectangle(img, (x0, y), (x0 + BAR_WIDTH, y + BAR_HEIGHT), (40, 40, 40), -1)
            cv2.rectangle(img, (x0, y), (x0 + int(round(float(p) * BAR_WIDTH)), y + BAR_HEIGHT), color, -1)
            _text(img, name[:8], (x0 + BAR_WIDTH + 4, y + BAR_HEIGHT - 1), 0.38, (255, 255, 255))
    return img
