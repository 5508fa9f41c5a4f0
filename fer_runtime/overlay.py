"""Saliency figures: original | jet heatmap overlay | face masked to its most salient pixels, with a caption."""
from __future__ import annotations

import cv2
import numpy as np

from fer_runtime.choices import FOCUS_THRESHOLD
from fer_runtime.images import resize, to_bgr
from fer_runtime.numeric import normalise_saliency

PANEL = 160  # side of each square panel, pixels
CAPTION = 24  # height of the caption bar above the panels
THRESHOLD = FOCUS_THRESHOLD
SMOOTH = 0.03  # Gaussian blur of the map, sigma as a fraction of the panel (~1.5 px of the 48 px input)
FIGURE_SHAPE = (CAPTION + PANEL, 3 * PANEL)  # (height, width) of every figure


def _fit(image: np.ndarray, side: int = PANEL) -> np.ndarray:
    """Letterbox ``image`` into a side x side black square, keeping its aspect ratio."""
    h, w = image.shape[:2]
    s = side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = resize(image, nw, nh)
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    y0, x0 = (side - nh) // 2, (side - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def smooth_map(saliency: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur a saliency map (sigma in pixels) and rescale it to max 1 again."""
    return normalise_saliency(np.asarray(saliency, np.float32)[None], sigma)[0]


def saliency_figure(face: np.ndarray, saliency: np.ndarray, caption: str, threshold: float = THRESHOLD,
                    smooth: float = SMOOTH) -> np.ndarray:
    """Build a BGR uint8 figure of shape :data:`FIGURE_SHAPE` (+3 channels).

    ``face``: the face crop (any dtype/channels); ``saliency``: a map in [0, 1] of any size (it is resized to
    the face); ``caption``: ASCII text such as ``"Happy 93%"``. Raw gradients are speckled, so the map is
    blurred (``smooth`` x panel side) and renormalised before the heatmap and the ``>= threshold`` mask.
    """
    face_bgr = to_bgr(face)
    h, w = face_bgr.shape[:2]
    sal = np.clip(resize(np.asarray(saliency, np.float32), w, h), 0.0, 1.0)
    face_p = _fit(face_bgr)
    sal_p = smooth_map(_fit(sal), smooth * PANEL)
    heat = cv2.applyColorMap(np.rint(sal_p * 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(face_p, 0.5, heat, 0.5, 0.0)
    focus = np.where((sal_p >= threshold)[:, :, None], face_p, 0).astype(np.uint8)
    fig = np.zeros(FIGURE_SHAPE + (3,), np.uint8)
    fig[CAPTION:, :PANEL], fig[CAPTION:, PANEL:2 * PANEL], fig[CAPTION:, 2 * PANEL:] = face_p, overlay, focus
    text = caption.encode("ascii", "replace").decode("ascii")
    cv2.putText(fig, text, (6, CAPTION - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for i, name in ((1, "saliency"), (2, f"focus >= {threshold:g}")):
        for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined, readable on any panel
            cv2.putText(fig, name, (i * PANEL + 4, FIGURE_SHAPE[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        color, thick, cv2.LINE_AA)
    return fig
