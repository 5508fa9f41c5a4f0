"""The one-call API ``fer_runtime.analyze`` and paths in ``Predictor.predict`` (issue 13, item 4). No TensorFlow."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import fer_runtime
from fer_runtime import LABELS, FaceEmotion, InvalidImageError, Predictor, analyze, read_image
from fer_runtime import oneshot
from fer_runtime.pipeline import infer_files
from fer_runtime.results import prob_column

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
TWO = EXAMPLES / "photo_two_faces.jpg"
from no_tf import BLOCK_TF  # noqa: E402  (tests/no_tf.py)


def _check(face: FaceEmotion) -> None:
    probs = np.array([face.probabilities[l] for l in LABELS])
    assert list(face.probabilities) == list(LABELS) and abs(probs.sum() - 1) < 1e-4
    assert face.label == LABELS[int(probs.argmax())] and face.confidence == pytest.approx(probs.max())


def test_analyze_a_photo_matches_fer_infer_rows(predictor: Predictor) -> None:
    faces = analyze(str(TWO), model=predictor)
    assert len(faces) == 2 and [f.source for f in faces] == ["detected", "detected"]
    assert faces[0].box.x < faces[1].box.x  # left to right
    rows = [r.fields for r in infer_files(predictor, [TWO])]
    for face, row in zip(faces, rows, strict=True):
        _check(face)
        assert 0.5 <= face.score <= 1 and face.score == face.box.score == row["score"]
        assert (face.box.x, face.box.y, face.box.w, face.box.h) == (row["x"], row["y"], row["w"], row["h"])
        assert face.label == row["label"] and face.confidence == pytest.approx(row["confidence"], abs=1e-6)
    # a Path and the decoded array give the same answer as the str
    for other in (analyze(TWO, model=predictor), analyze(read_image(TWO), model=predictor)):
        assert [(f.box, f.label) for f in other] == [(f.box, f.label) for f in faces]


def test_analyze_a_crop_a_blank_photo_and_faces_crop(predictor: Predictor) -> None:
    (face,) = analyze(EXAMPLES / "happy_0.png", model=predictor)  # up to 128 px: the image is the face
    _check(face)
    assert face.source == "whole" and face.score is None and (face.box.w, face.box.h) == (48, 48)
    np.testing.assert_allclose(list(face.probabilities.values()),
                               predictor.predict(read_image(EXAMPLES / "happy_0.png"))[0], atol=1e-6)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert analyze(noise, model=predictor) == []  # no face: no label (the `source=none` rule)
    (whole,) = analyze(noise, model=predictor, faces="crop")
    assert whole.source == "whole" and (whole.box.w, whole.box.h) == (640, 480)
    assert len(analyze(TWO, model=predictor, detector="haar")) == 2



def test_infer_files_sees_a_dark_face_as_the_library_does(predictor: Predictor, tmp_path: Path) -> None:
    # Pixels of only 0 and 1: preprocessed twice, the float copy (max 1.0) would be read as a 0..1 image and
    # stretched to 0..255. fer-infer must classify the pixels the Predictor classifies.
    face = read_image(EXAMPLES / "happy_0.png")
    dark = (face > face.mean()).astype(np.uint8)
    path = tmp_path / "dark.png"
    cv2.imwrite(str(path), dark)
    (row,) = [r.fields for r in infer_files(predictor, [path], faces="crop")]
    np.testing.assert_allclose([row[prob_column(l)] for l in LABELS], predictor.predict(dark)[0], atol=1e-6)
    assert not np.allclose(predictor.predict(dark), predictor.predict(dark * 255), atol=1e-3)

def test_analyze_errors(predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="no such file"):
        analyze(tmp_path / "absent.jpg", model=predictor)
    for bad in (np.zeros(5, np.uint8), np.zeros((0, 4), np.uint8), np.zeros((9, 9, 2), np.uint8), [1, 2]):
        with pytest.raises(InvalidImageError):
            analyze(bad, model=predictor)
    with pytest.raises(ValueError, match="faces must be one of"):
        analyze(TWO, model=predictor, faces="all")


def test_default_predictor_is_built_once_per_model_across_threads(model_dir: Path, monkeypatch) -> None:
    built: list[str | None] = []

    class Slow(Predictor):  # the real Predictor, made slow to build so that racing threads overlap
        def __init__(self, *args, **kwargs) -> None:
            built.append(kwargs.get("model"))
            time.sleep(0.2)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(oneshot, "Predictor", Slow)
    monkeypatch.setattr(oneshot, "_predictors", {})
    got: list[Predictor] = []
    threads = [threading.Thread(target=lambda: got.append(oneshot.default_predictor("fast", model_dir)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["fast"] and len(got) == 6 and all(p is got[0] for p in got)
    assert got[0].variant == "fast"
    (face,) = analyze(EXAMPLES / "sad_0.png", model="fast", model_dir=model_dir)  # the cached one is used
    assert built == ["fast"]
    _check(face)


def test_predict_accepts_paths(predictor: Predictor, tmp_path: Path) -> None:
    path = EXAMPLES / "fear_0.png"
    expected = predictor.predict(read_image(path))
    for arg in (str(path), path, [path], [str(path), read_image(path)]):
        probs = predictor.predict(arg)
        assert probs.shape == (1 if not isinstance(arg, list) or len(arg) == 1 else 2, len(LABELS))
        np.testing.assert_allclose(probs, np.repeat(expected, len(probs), axis=0), atol=1e-6)
    assert predictor.saliency(str(path)).shape == (1, 48, 48)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InvalidImageError, match="notes.png"):
        predictor.predict([path, tmp_path / "notes.png"])


def test_analyze_is_exported_lazily_and_runs_with_tensorflow_blocked(model_dir: Path, tmp_path: Path) -> None:
    assert fer_runtime.analyze is analyze and "analyze" in fer_runtime.__all__
    code = BLOCK_TF + f"""
import fer_runtime
heavy = [m for m in ('onnxruntime', 'cv2', 'numpy') if m in sys.modules]
assert not heavy, heavy
from fer_runtime import analyze
faces = analyze({str(TWO)!r})
assert callable(analyze) and len(faces) == 2, faces
print(faces[1].label, round(faces[1].confidence, 3), sorted(faces[1].probabilities) == sorted(fer_runtime.LABELS))
bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]
assert not bad, bad
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FER_MODEL_DIR": str(model_dir)})
    assert r.returncode == 0, r.stderr
    label, _, keys = r.stdout.split()
    assert label in LABELS and keys == "True"
