"""Temperature scaling of an ensemble (numpy only, no TensorFlow).

The exported graphs compute ``probs = mean over terms of softmax(z_k / T)``, where the terms are
the members (times the TTA views). :func:`fit_temperature` picks the ``T`` that minimises the
negative log-likelihood of exactly that mean on held-out rows (PublicTest); the calibration
record of a variant (:func:`calibration_record`) reports NLL and ECE before (``T = 1``) and after.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from fer_export.errors import ExportError
from fer_runtime.numeric import log_softmax
from fer_train.metrics import expected_calibration_error

__all__ = ["T_MIN", "T_MAX", "ensemble_log_probs", "ensemble_probs", "ensemble_nll", "fit_temperature",
           "expected_calibration_error", "calibration_record"]

T_MIN, T_MAX = 0.05, 20.0
_GRID = 49  # log-spaced grid points over [T_MIN, T_MAX] before the golden-section refinement
_TOL = 1e-5  # on log T
_INV_PHI = (math.sqrt(5) - 1) / 2


def _stack(member_logits: Sequence[np.ndarray], y: np.ndarray | None = None) -> np.ndarray:
    """Member logits as one float64 array [K, N, C]; ExportError on empty or mismatched shapes."""
    if len(member_logits) == 0:
        raise ExportError("calibration needs the logits of at least one member")
    shapes = {np.shape(z) for z in member_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ExportError(f"member logits must all be [N, C] arrays of one shape, got {sorted(shapes)}")
    z = np.stack([np.asarray(m, np.float64) for m in member_logits])
    if y is not None and len(y) != z.shape[1]:
        raise ExportError(f"{z.shape[1]} rows of logits but {len(y)} labels")
    if not np.isfinite(z).all():
        raise ExportError("member logits contain NaN or inf")
    return z


def _log_probs(z: np.ndarray, temperature: float) -> np.ndarray:
    """log of the mean over axis 0 of softmax(z / T): [N, C], computed with log-sum-exp."""
    return np.logaddexp.reduce(log_softmax(z, temperature, axis=2), axis=0) - math.log(len(z))


def ensemble_log_probs(member_logits: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """log(mean_k softmax(z_k / T)), [N, C] float64."""
    return _log_probs(_stack(member_logits), temperature)


def ensemble_probs(member_logits: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """mean_k softmax(z_k / T), [N, C] float64: what the exported graph's ``probs`` computes."""
    return np.exp(ensemble_log_probs(member_logits, temperature))


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-_log_probs(z, temperature)[np.arange(len(y)), y].mean())


def ensemble_nll(member_logits: Sequence[np.ndarray], y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels ``y`` under the ensemble at temperature ``T``."""
    y = np.asarray(y, np.int64)
    return _nll(_stack(member_logits, y), y, temperature)


def fit_temperature(member_logits: Sequence[np.ndarray], y: np.ndarray, t_min: float = T_MIN,
                    t_max: float = T_MAX) -> float:
    """The temperature in ``[t_min, t_max]`` minimising :func:`ensemble_nll` on (``member_logits``, ``y``).

    ``member_logits``: one [N, C] array per ensemble term (member, or member x TTA view).
    A log-spaced grid finds the best bracket, golden-section search refines it (to ~1e-5 in log T).
    """
    y = np.asarray(y, np.int64)
    z = _stack(member_logits, y)
    if len(y) == 0:
        raise ExportError("calibration needs at least one labelled row")
    if y.min() < 0 or y.max() >= z.shape[2]:
        raise ExportError(f"labels must be in 0..{z.shape[2] - 1} for calibration")
    if not 0 < t_min < t_max:
        raise ExportError(f"temperature bounds must satisfy 0 < t_min < t_max, got {t_min}, {t_max}")
    f = lambda u: _nll(z, y, math.exp(u))  # noqa: E731
    grid = np.linspace(math.log(t_min), math.log(t_max), _GRID)
    vals = [f(u) for u in grid]
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > _TOL:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
    u = (a + b) / 2
    best = min((f(u), u), (vals[i], grid[i]))[1]  # never worse than the best grid point
    return float(math.exp(best))


def calibration_record(member_logits: Sequence[np.ndarray], y: np.ndarray, temperature: float,
                       fitted_on: str = "PublicTest") -> dict[str, Any]:
    """The manifest's ``calibration`` dict: NLL and ECE at ``T = 1`` (before) and at ``temperature`` (after)."""
    y = np.asarray(y, np.int64)
    z = _stack(member_logits, y)
    before, after = np.exp(_log_probs(z, 1.0)), np.exp(_log_probs(z, temperature))
    return {"fitted_on": fitted_on, "temperature": float(temperature),
            "nll_before": _nll(z, y, 1.0), "nll_after": _nll(z, y, temperature),
            "ece_before": expected_calibration_error(before, y), "ece_after": expected_calibration_error(after, y),
            "images": int(len(y))}
