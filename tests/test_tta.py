"""fer_runtime.tta: the TTA views' layout and the crop matrices (their match with tf.image.resize is in test_export)."""
from __future__ import annotations

import numpy as np
import pytest

from fer_runtime import tta


def test_modes_are_nested_prefixes_of_the_views():
    assert [tta.view_count(t) for t in tta.TTA_MODES] == [1, 2, 12]
    assert tta.modes_within(1) == [("none", 1)]
    assert tta.modes_within(2) == [("none", 1), ("flip", 2)]
    assert tta.modes_within(12) == [("none", 1), ("flip", 2), ("crops", 12)]
    with pytest.raises(KeyError):
        tta.view_count("rot90")


def test_crop_matrices_resample_inside_their_crop_and_keep_flat_images_exactly_flat():
    assert tta.crop_offsets() == [(2, 2), (0, 0), (0, 4), (4, 0), (4, 4)]  # centre, then the corners
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (48, 48)).astype(np.float32)
    for (r0, c0), (rows, cols) in zip(tta.crop_offsets(), tta.crop_matrices()):
        assert (rows.sum(1) == 1).all() and (cols.sum(1) == 1).all()
        outside = np.ones(48, bool)
        outside[r0:r0 + tta.CROP_SIZE] = False
        assert not rows[:, outside].any()  # rows read only the crop's rows
        outside = np.ones(48, bool)
        outside[c0:c0 + tta.CROP_SIZE] = False
        assert not cols[:, outside].any()
        for level in (0.0, 128.0):  # the exporter's flat verification images stay exactly flat (no max-pool noise)
            assert (rows @ np.full((48, 48), level, np.float32) @ cols.T == level).all()
        view = rows @ img @ cols.T
        assert view[0, 0] == pytest.approx(img[r0, c0], abs=1e-3)  # corners land on the crop's corners
        assert view[-1, -1] == pytest.approx(img[r0 + 43, c0 + 43], abs=1e-3)
    # A crop as large as the image is the identity.
    np.testing.assert_array_equal(tta.resize_matrix(0, crop=48), np.eye(48, dtype=np.float32))
