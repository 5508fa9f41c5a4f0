"""fer_runtime.numeric: the one softmax, saliency normalisation and cosine similarity every side uses."""
from __future__ import annotations

import numpy as np
import pytest

from fer_runtime.numeric import cosine_similarity, log_softmax, normalise_saliency, softmax


def test_softmax_matches_its_definition_at_a_temperature():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    p = softmax(z)
    assert p[0] == pytest.approx(np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    assert p[1] == pytest.approx([0.5, 0.5, 0.0])  # large logits do not overflow
    hot = softmax(z[:1], temperature=2.0)[0]
    assert hot == pytest.approx(np.exp([0.5, 1, 1.5]) / np.exp([0.5, 1, 1.5]).sum())
    assert softmax(z.T, axis=0) == pytest.approx(p.T)
    assert np.exp(log_softmax(z, 2.0)) == pytest.approx(softmax(z, 2.0))


def test_normalise_saliency_is_abs_blur_and_max_one_per_image():
    g = np.zeros((3, 48, 48, 1), np.float32)
    g[0, 10, 20] = -3.0
    g[2, 5, 5], g[2, 40, 40] = 2.0, -1.0
    m = normalise_saliency(g)
    assert m.shape == (3, 48, 48) and m.dtype == np.float32
    assert m[0, 10, 20] == 1.0 and m[0].sum() == 1.0 and m[1].max() == 0  # an all-zero map stays zero
    assert m[2, 5, 5] == 1.0 and m[2, 40, 40] == 0.5  # |grad| / per-image max
    blurred = normalise_saliency(g, smooth=1.0)
    assert blurred[0].max() == pytest.approx(1.0) and blurred[0, 10, 20] == blurred[0].max()
    assert 0 < blurred[0, 10, 21] < 1 and (blurred[0] > 0).sum() > 1
    assert normalise_saliency(np.ones((2, 30, 20))).shape == (2, 30, 20)  # any size
    flat = np.stack([np.full((6, 5), 0.3), np.full((6, 5), -2.0), np.arange(30.0).reshape(6, 5)])
    m = normalise_saliency(flat)
    assert m[0].max() == 0 and m[1].max() == 0  # a flat gradient points at no pixel: all zeros
    assert m[2].max() == 1.0 and m[2, 0, 0] == 0.0
    assert normalise_saliency(np.zeros((0, 48, 48))).shape == (0, 48, 48)
    with pytest.raises(ValueError, match="saliency must be"):
        normalise_saliency(np.ones((48, 48)))


def test_cosine_similarity_per_image():
    a = np.zeros((3, 4, 4))
    a[0, 0, 0], a[1, 1, 1] = 1.0, 2.0
    b = a.copy()
    b[1] *= -3
    b[0, 0, 1] = 1.0
    assert cosine_similarity(a, b) == pytest.approx([1 / np.sqrt(2), -1.0, 1.0])  # two zero maps agree
    assert cosine_similarity(a, 2 * a)[:2] == pytest.approx([1.0, 1.0])
    assert cosine_similarity(a[:1], np.zeros((1, 4, 4)))[0] == 0.0
