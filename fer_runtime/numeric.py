"""The small numeric rules every side shares, defined once (numpy and OpenCV only, no TensorFlow).

* :func:`softmax` / :func:`log_softmax` of logits at a temperature;
* :func:`normalise_saliency`: |gradient|, optionally Gaussian-smoothed, scaled to max 1 per image (a flat map: 0);
* :func:`cosine_similarity`: per-image cosine of two stacks of maps.
"""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """``log softmax(logits / temperature)`` along ``axis`` in float64 (log-sum-exp, stable for any logits)."""
    s = np.asarray(logits, np.float64) / temperature
    return s - np.logaddexp.reduce(s, axis=axis, keepdims=True)


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """``softmax(logits / temperature)`` along ``axis`` in float64 (the maximum is subtracted first)."""
    s = np.asarray(logits, np.float64) / temperature
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def normalise_saliency(grad: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """Saliency maps [N,H,W] float32 in [0, 1] from raw gradients [N,H,W] or [N,H,W,1].

    Each map is ``|grad|``, blurred with a Gaussian of sigma ``smooth`` pixels when ``smooth > 0``,
    then divided by its own maximum, so its maximum is exactly 1.0. A map that is the same everywhere
    (all zero, or a flat gradient) points at no pixel and becomes all zeros.
    """
    g = np.abs(np.asarray(grad, np.float32))
    if g.ndim == 4 and g.shape[-1] == 1:
        g = g[..., 0]
    if g.ndim != 3:
        raise ValueError(f"saliency must be [N,H,W] or [N,H,W,1], got shape {np.shape(grad)}")
    if smooth > 0 and len(g):
        import cv2

        g = np.stack([cv2.GaussianBlur(m, (0, 0), smooth) for m in g])
    per_map = g.reshape(len(g), g.shape[1] * g.shape[2])
    peak = per_map.max(axis=1, initial=0.0)[:, None, None]
    floor = per_map.min(axis=1, initial=np.inf)[:, None, None]
    return np.divide(g, peak, out=np.zeros_like(g), where=peak > floor)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image cosine similarity [N] (float64) of two [N,...] arrays; 1.0 where both are all zero."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity: shapes {a.shape} and {b.shape} differ")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, np.finfo(np.float64).tiny))
