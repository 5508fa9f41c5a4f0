"""Train and serve see the same pixels: an image in a class folder (``fer_train.data``) and the same file
through the Predictor give the same 48x48 array. No TensorFlow (fer_train.data needs only numpy/OpenCV)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_runtime.images import read_image
from fer_train.data import load_image_folders

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


class _FeedSpy:
    """Wraps an onnxruntime session and records every ``image`` batch the model is given."""

    def __init__(self, session, input_name: str) -> None:
        self.session, self.input_name, self.seen = session, input_name, []

    def run(self, outputs, feed):
        self.seen.append(np.array(feed[self.input_name]))
        return self.session.run(outputs, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _write(path: Path, image: np.ndarray) -> None:
    cv2.imencode(path.suffix, image)[1].tofile(path)


def test_folder_image_and_predictor_see_the_same_48x48(predictor, tmp_path: Path) -> None:
    photo = cv2.imread(str(EXAMPLES / "photo_one_face.jpg"))  # BGR
    face = cv2.imread(str(EXAMPLES / "surprise_0.png"), cv2.IMREAD_GRAYSCALE)  # 48x48 gray
    d = tmp_path / "happy"
    d.mkdir()
    _write(d / "a_color_shrunk.png", photo[40:260, 200:380])  # BGR, shrunk to 48x48
    _write(d / "b_color_enlarged.jpg", cv2.resize(photo[60:200, 240:360], (31, 29)))  # BGR JPEG, enlarged
    _write(d / "c_gray_enlarged.png", cv2.resize(face, (20, 20), interpolation=cv2.INTER_AREA))
    _write(d / "d_sixteen_bit.png", face.astype(np.uint16) * 257)
    _write(d / "e_bgra.png", np.dstack([cv2.cvtColor(cv2.resize(face, (64, 64)), cv2.COLOR_GRAY2BGR),
                                        np.full((64, 64), 200, np.uint8)]))
    files = sorted(d.iterdir())
    train = load_image_folders(tmp_path, validate=0.5)["all"].x[..., 0]  # folder order = sorted file names

    spy = _FeedSpy(predictor._forward, predictor._input_name)
    predictor._forward = spy
    try:
        predictor.predict([read_image(f) for f in files])
    finally:
        predictor._forward = spy.session
    served = np.concatenate(spy.seen)[..., 0]

    assert train.shape == served.shape == (len(files), 48, 48)
    for f, a, b in zip(files, train, served):
        assert np.array_equal(a.astype(np.float32), b), f"{f.name}: max |train - serve| = {np.abs(a - b).max()}"
