"""fer_export.detector_build's reference inputs: the bundled photos, letterboxed as the runtime does."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_export.detector_build import reference_inputs
from fer_runtime.detectors import letterbox
from fer_runtime.images import read_image, to_bgr

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_reference_inputs_start_with_the_letterboxed_example_photos() -> None:
    paths = sorted(PHOTOS.glob("*.jpg"))
    assert paths
    x = reference_inputs(128, PHOTOS)
    assert x.shape[0] > len(paths) and x.shape[1:] == (128, 128, 3) and x.dtype == np.float32
    first = letterbox(to_bgr(read_image(paths[0])), 128)[0].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(x[0], first)
