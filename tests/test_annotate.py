"""``fer_runtime.annotate.draw_results``: boxes, labels and probability bars drawn where they belong. No TensorFlow."""
from __future__ import annotations

import numpy as np

from fer_runtime import LABELS
from fer_runtime.annotate import BAR_HEIGHT, BAR_WIDTH, draw_results, track_color
from fer_runtime.boxes import Box
from fer_runtime.frames import FaceResult


def _result(track: int, box: Box, smoothed: list[float]) -> FaceResult:
    p = np.asarray(smoothed, np.float32)
    k = int(np.argmax(p))
    return FaceResult(track=track, box=box, probs=p, smoothed=p, label=LABELS[k], confidence=float(p[k]),
                      detected=True, frame=0, timestamp_ms=None)


def test_box_outline_and_bars_follow_the_results() -> None:
    frame = np.full((240, 320, 3), 128, np.uint8)
    probs = [0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0]  # Happy full, Surprise half, the rest empty
    box = Box(40, 30, 60, 50)
    out = draw_results(frame, [_result(2, box, probs)], LABELS)
    color = np.array(track_color(2), np.uint8)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 128).all()  # the input is not drawn on
    # the 2 px outline in the track's colour on all four sides, the inside left alone
    for y, x in ((30, 70), (31, 70), (79, 70), (55, 40), (55, 99), (55, 98)):
        assert (out[y, x] == color).all(), (y, x, out[y, x])
    assert (out[55, 70] == 128).all()
    # the chart under the box: one bar per label, filled in the track colour in proportion to its probability
    x0, y0 = box.x, box.y + box.h + 4
    for k, p in enumerate(probs):
        y = y0 + k * (BAR_HEIGHT + 3) + BAR_HEIGHT // 2
        filled = (out[y, x0:x0 + BAR_WIDTH + 1] == color).all(axis=1)
        assert abs(int(filled.sum()) - round(p * BAR_WIDTH)) <= 1, (LABELS[k], int(filled.sum()))
    # nothing outside the box, its label and its chart
    assert (out[200:, 200:] == 128).all() and (out[:20, 200:] == 128).all()


def test_gray_frames_and_no_results() -> None:
    gray = np.full((60, 80), 90, np.uint8)
    out = draw_results(gray, [], LABELS)
    assert out.shape == (60, 80, 3) and (out == 90).all()
    bgra = np.zeros((60, 80, 4), np.uint8)
    assert draw_results(bgra, [], LABELS).shape == (60, 80, 3)


def test_chart_moves_beside_a_box_at_the_bottom_edge() -> None:
    frame = np.zeros((200, 400, 3), np.uint8)
    box = Box(20, 120, 70, 75)  # no room for the chart below
    out = draw_results(frame, [_result(0, box, [1, 0, 0, 0, 0, 0, 0])], LABELS)
    color = np.array(track_color(0), np.uint8)
    x0 = box.x + box.w + 6  # right of the box
    y0 = max(0, min(box.y, 200 - len(LABELS) * (BAR_HEIGHT + 3)))
    assert (out[y0 + BAR_HEIGHT // 2, x0:x0 + BAR_WIDTH] == color).all()  # Angry's bar, full
    assert not out[box.y + box.h + 2:, box.x:box.x + box.w].any()  # nothing under the box
