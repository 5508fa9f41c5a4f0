"""Test-time augmentation (TTA): the views an ensemble graph averages, defined once.

An exported forward graph's ``member_probs`` is [N, M, V, 7]: member m's probabilities on view v.
The modes are nested, each one's views starting with the previous mode's:

* ``none``: view 0, the image;
* ``flip``: view 1, its left-right mirror;
* ``crops``: views 2..11, five 44x44 crops (center, top-left, top-right, bottom-left, bottom-right)
  each resized back to 48x48 (bilinear, half-pixel centres, as ``tf.image.resize``), each followed by
  its mirror.

A crop-and-resize is linear in the pixels: ``view = rows @ image @ cols.T`` with two fixed 48x48
matrices (:func:`crop_matrices`), which is how both the Keras reference and the exported graph
compute it (and why its gradient, for saliency, is ``rows.T @ dy @ cols``).
"""
from __future__ import annotations

import numpy as np

from fer_runtime.labels import IMAGE_SIZE

TTA_MODES: tuple[str, ...] = ("none", "flip", "crops")
CROP_SIZE: int = 44
CROP_POSITIONS: tuple[str, ...] = ("center", "top-left", "top-right", "bottom-left", "bottom-right")


def view_count(tta: str) -> int:
    """Number of views of a TTA mode (1, 2 or 12); KeyError for an unknown mode."""
    return {"none": 1, "flip": 2, "crops": 2 + 2 * len(CROP_POSITIONS)}[tta]


def modes_within(views: int) -> list[tuple[str, int]]:
    """(mode, its view count) for every mode whose views are the first of ``views`` views."""
    return [(t, view_count(t)) for t in TTA_MODES if view_count(t) <= views]


def crop_offsets(crop: int = CROP_SIZE, size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
    """(row, column) of each crop's top-left pixel, in :data:`CROP_POSITIONS` order."""
    far, mid = size - crop, (size - crop) // 2
    return [(mid, mid), (0, 0), (0, far), (far, 0), (far, far)]


def resize_matrix(offset: int, crop: int = CROP_SIZE, size: int = IMAGE_SIZE) -> np.ndarray:
    """[size, size] float32 ``R`` with ``R @ v`` = pixels ``offset..offset+crop`` of ``v`` resized to ``size``.

    Bilinear with half-pixel centres, clamped at the crop's edges (TF's ``resize_bilinear``).
    """
    r = np.zeros((size, size), np.float64)
    for i in range(size):
        src = (i + 0.5) * crop / size - 0.5
        lo = int(np.floor(src))
        frac = src - lo
        r[i, offset + min(max(lo, 0), crop - 1)] += 1.0 - frac
        r[i, offset + min(max(lo + 1, 0), crop - 1)] += frac
    return r.astype(np.float32)


def crop_matrices() -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of each crop view in :data:`CROP_POSITIONS` order: ``view = rows @ image @ cols.T``."""
    return [(resize_matrix(r), resize_matrix(c)) for r, c in crop_offsets()]
