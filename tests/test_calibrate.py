"""Temperature scaling (fer_export.calibrate): numpy only, so these run without TensorFlow."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fer_export.calibrate import (T_MAX, calibration_record, ensemble_nll, ensemble_probs, expected_calibration_error,
                                  fit_temperature)
from fer_export.errors import ExportError


def _sample(z: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Labels drawn from softmax(z / T), one per row."""
    p = np.exp(z / temperature - (z / temperature).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    u = np.random.default_rng(seed).random((len(z), 1))
    return np.minimum((p.cumsum(1) < u).sum(1), z.shape[1] - 1)


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_fit_recovers_a_known_temperature(true_t):
    z = np.random.default_rng(1).normal(0, 3, (20000, 7))
    y = _sample(z, true_t, seed=2)
    t = fit_temperature([z], y)
    assert t == pytest.approx(true_t, rel=0.10)
    # and it is the minimum: slightly off either way is worse
    assert ensemble_nll([z], y, t) < min(ensemble_nll([z], y, t * 1.1), ensemble_nll([z], y, t / 1.1))


def test_fit_on_an_ensemble_uses_the_mean_of_member_softmaxes():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 3, (8000, 7))
    members = [base + rng.normal(0, 0.3, base.shape) for _ in range(3)]
    y = _sample(base, 2.0, seed=4)
    t = fit_temperature(members, y)
    assert 1.6 < t < 2.4
    # The objective is that of the mean of softmaxes, not of the mean logits.
    p = np.mean([np.exp(m / t) / np.exp(m / t).sum(1, keepdims=True) for m in members], axis=0)
    np.testing.assert_allclose(ensemble_probs(members, t), p, atol=1e-12)
    assert ensemble_nll(members, y, t) == pytest.approx(-np.log(p[np.arange(len(y)), y]).mean(), rel=1e-12)


def test_fitting_lowers_nll_and_ece_of_an_overconfident_model():
    z = np.random.default_rng(5).normal(0, 2, (10000, 7))
    y = _sample(z, 1.0, seed=6)
    over = [z * 3]  # three times too confident: true T = 3
    t = fit_temperature(over, y)
    rec = calibration_record(over, y, t)
    assert t == pytest.approx(3.0, rel=0.1)
    assert rec["nll_after"] < rec["nll_before"] - 0.1
    assert rec["ece_after"] < rec["ece_before"] / 3
    assert rec["fitted_on"] == "PublicTest" and rec["images"] == 10000 and rec["temperature"] == t


def test_fit_stays_in_bounds_and_refuses_bad_input():
    z = np.random.default_rng(7).normal(0, 1, (500, 7))
    y = z.argmax(1)  # perfectly separable: NLL keeps falling as T -> 0
    assert fit_temperature([z], y) == pytest.approx(0.05, rel=1e-3)
    noise = np.random.default_rng(8).integers(0, 7, 500)  # labels unrelated to the logits
    t = fit_temperature([z], noise)  # the flatter the better: the search must run up to the upper bound
    assert t == pytest.approx(T_MAX, rel=1e-3)
    assert ensemble_nll([z], noise, t) < ensemble_nll([z], noise, T_MAX / 2) < ensemble_nll([z], noise, 1.0)
    with pytest.raises(ExportError, match="at least one member"):
        fit_temperature([], y)
    with pytest.raises(ExportError, match="one shape"):
        fit_temperature([z, z[:10]], y)
    with pytest.raises(ExportError, match="labels"):
        fit_temperature([z], y[:10])
    with pytest.raises(ExportError, match="0..6"):
        fit_temperature([z], np.full(500, 7))
    with pytest.raises(ExportError, match="NaN"):
        fit_temperature([np.full((500, 7), np.nan)], y)


def test_ece_by_hand():
    y = np.array([0, 1, 0, 1])
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): bins (0.8,0.867] etc. hold one value each
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    # bin of 0.9: 2 rows, accuracy 0.5, confidence 0.9 -> |0.5-0.9| * 2/4 = 0.2
    # bin of 0.6: 2 rows, accuracy 1.0, confidence 0.6 -> |1.0-0.6| * 2/4 = 0.2
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([[0.7, 0.3]] * 10), np.array([0] * 7 + [1] * 3)) == pytest.approx(0.0)


def test_calibrate_imports_no_tensorflow():
    code = ("import sys, fer_export.calibrate, fer_train.metrics; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
