"""Video path of the runtime: IoU tracking, smoothing, FrameAnalyzer, video I/O, ``fer-infer VIDEO`` and the camera app.

Videos are made here: real FER2013 crops (the committed fixture) or the example photos pasted on a
640x480 background and moved between frames, written with OpenCV's VideoWriter. No TensorFlow.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fer_runtime import Box, InvalidImageError, Predictor, read_image
from fer_runtime.annotate import track_color
from fer_runtime.cli import app
from fer_runtime.errors import InvalidVideoError
from fer_runtime.frames import FrameAnalyzer
from fer_runtime.results import video_columns
from fer_runtime.tracking import IouTracker, ema, iou
from fer_runtime.video import VideoReader, VideoWriter, is_video_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
W, H, FPS = 640, 480, 10.0
SIDE = 140  # pasted face side, pixels
runner = CliRunner()


# -- helpers (fixtures model_dir, predictor, faces: tests/conftest.py) -----------------------------
def background(seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with a little noise, 640x480 BGR."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg = np.stack([60 + 100 * xx / W, 80 + 60 * yy / H, 140 - 60 * xx / W], axis=2)
    bg += np.random.default_rng(seed).normal(0, 4, bg.shape)
    return np.clip(bg, 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, face: np.ndarray, box: Box) -> None:
    big = cv2.resize(face, (box.w, box.h), interpolation=cv2.INTER_LINEAR)
    frame[box.y:box.y + box.h, box.x:box.x + box.w] = big[:, :, None] if big.ndim == 2 else big


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    fourcc = {".avi": "MJPG", ".mp4": "mp4v"}[path.suffix]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert w.isOpened()
    for f in frames:
        w.write(f)
    w.release()
    return path


def moving_boxes(n: int) -> list[list[Box]]:
    """Two faces: one moving right, one moving down-left, 6 px per frame."""
    return [[Box(40 + 6 * t, 60, SIDE, SIDE), Box(420 - 4 * t, 200 + 6 * t, SIDE, SIDE)] for t in range(n)]


def box_detector(boxes: list[list[Box]], jitter: int = 4, miss: dict[int, int] | None = None, seed: int = 0):
    """A detector that returns the known paste boxes of the k-th call, jittered, minus ``miss[k]`` (a face index)."""
    rng = np.random.default_rng(seed)
    calls = iter(range(10 ** 6))

    def detect(frame: np.ndarray) -> list[Box]:
        k = next(calls)
        out = []
        for i, b in enumerate(boxes[k]):
            if miss and miss.get(k) == i:
                continue
            dx, dy, dw = (int(v) for v in rng.integers(-jitter, jitter + 1, 3))
            out.append(Box(max(0, b.x + dx), max(0, b.y + dy), b.w + dw, b.h + dw))
        return out
    return detect


def photo_frames(name: str, n: int, step: int = 4) -> list[np.ndarray]:
    """An example photo at 640x480, shifted right by ``step`` px per frame (both detectors find its faces)."""
    im = cv2.resize(read_image(EXAMPLES / name), (W, H))
    return [np.roll(im, step * t, axis=1) for t in range(n)]


def flips(labels: list[int]) -> int:
    return int(sum(a != b for a, b in zip(labels, labels[1:])))


# -- tracking ---------------------------------------------------------------------------------------
def test_iou_and_ema() -> None:
    a = Box(0, 0, 10, 10)
    assert iou(a, a) == 1.0
    assert iou(a, Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(a, Box(10, 0, 10, 10)) == 0.0
    prev, cur = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(ema(prev, cur, 0.75), [0.75, 0.25])
    np.testing.assert_allclose(ema(None, cur, 0.75), cur)


def test_tracker_keeps_ids_drops_stale_tracks_and_never_reuses_ids() -> None:
    t = IouTracker(iou_threshold=0.3, max_missed=1)
    a, b = Box(0, 0, 50, 50), Box(200, 0, 50, 50)
    assert [x.id for x in t.update([a, b])] == [0, 1]
    assert [x.id for x in t.update([Box(205, 3, 50, 50), Box(4, 2, 50, 50)])] == [1, 0]  # order follows boxes
    assert [x.id for x in t.update([Box(8, 4, 50, 50)])] == [0]  # b missed once: kept
    assert [x.id for x in t.visible()] == [0]
    assert [x.id for x in t.update([Box(210, 5, 50, 50)])] == [1]  # b is back with its id; a missed once
    assert [x.id for x in t.update([Box(500, 300, 50, 50)])] == [2]  # a new face; a missed twice: dropped
    assert sorted(x.id for x in t.tracks) == [1, 2]
    t.update([])
    assert t.update([]) == [] and t.tracks == []
    assert [x.id for x in t.update([a])] == [3]


# -- FrameAnalyzer on a synthetic video -------------------------------------------------------------
def test_track_ids_stay_stable_on_moving_faces(tmp_path: Path, predictor: Predictor, faces: np.ndarray) -> None:
    n = 24
    boxes = moving_boxes(n)
    frames = []
    for t in range(n):
        f = background(t)
        paste(f, faces[3], boxes[t][0])
        paste(f, faces[7], boxes[t][1])
        frames.append(f)
    video = write_video(tmp_path / "two.avi", frames)
    # detector misses face 1 on frame 5 and face 0 on frame 11: their tracks must survive
    analyzer = FrameAnalyzer(predictor, detector=box_detector(boxes, miss={5: 1, 11: 0}), max_missed=2)
    ids: dict[int, set[int]] = {0: set(), 1: set()}
    with VideoReader(video) as reader:
        for frame in reader:
            results = analyzer.process(frame.image, timestamp=frame.timestamp_ms)
            assert len(results) == 2 - (frame.index in (5, 11))
            for r in results:
                assert r.frame == frame.index and r.timestamp_ms == pytest.approx(frame.index * 100, abs=1)
                near = min(range(2), key=lambda i: abs(boxes[frame.index][i].x - r.box.x))
                ids[near].add(r.track)
                assert r.probs.shape == r.smoothed.shape == (len(predictor.labels),)
                assert r.label == predictor.labels[int(np.argmax(r.smoothed))]
    assert ids == {0: {0}, 1: {1}}


def test_detect_every_reuses_boxes_between_detections(predictor: Predictor, faces: np.ndarray) -> None:
    n = 9
    boxes = [[Box(100 + 2 * t, 100, SIDE, SIDE)] for t in range(n)]
    calls = []
    detect = box_detector(boxes[::3], jitter=0)
    analyzer = FrameAnalyzer(predictor, detect_every=3, detector=lambda f: calls.append(1) or detect(f))
    for t in range(n):
        frame = background(t)
        paste(frame, faces[0], boxes[t][0])
        (r,) = analyzer.process(frame)
        assert r.detected == (t % 3 == 0)
        assert r.box == boxes[t - t % 3][0]  # the box of the last detection
        assert r.track == 0
    assert len(calls) == 3


def test_smoothing_reduces_label_flips(predictor: Predictor, faces: np.ndarray) -> None:
    # two confidently predicted faces with different labels; the track shows A with B flashing in
    probs = predictor.predict(list(faces))
    order = np.argsort(-probs.max(axis=1))
    a = int(order[0])
    b = int(next(i for i in order if probs[i].argmax() != probs[a].argmax()))
    seq = [b if t % 3 == 2 else a for t in range(30)]
    box = Box(200, 150, SIDE, SIDE)
    rng = np.random.default_rng(1)

    def run(smoothing: float) -> tuple[list[int], list[int]]:
        analyzer = FrameAnalyzer(predictor, smoothing=smoothing, detector=lambda f: [box])
        raw, smooth = [], []
        for t, k in enumerate(seq):
            frame = background(t)
            paste(frame, faces[k], box)
            noisy = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
            (r,) = analyzer.process(noisy)
            raw.append(r.raw_index)
            smooth.append(int(np.argmax(r.smoothed)))
        return raw, smooth

    raw, smooth = run(0.7)
    assert flips(raw) >= 15  # the input really flips (two per B frame)
    assert flips(smooth) <= flips(raw) // 4
    raw0, smooth0 = run(0.0)
    assert smooth0 == raw0  # no smoothing: smoothed is the raw output


@pytest.mark.parametrize("detector, scale_factor", [("blazeface", 1.1), ("haar", 1.1), ("haar", 1.2)])
def test_detectors_end_to_end_on_example_photos(tmp_path: Path, predictor: Predictor, detector: str,
                                                scale_factor: float) -> None:
    for name, n_faces in (("photo_one_face.jpg", 1), ("photo_two_faces.jpg", 2)):
        video = write_video(tmp_path / f"{name}.avi", photo_frames(name, 12))
        analyzer = FrameAnalyzer(predictor, detector=detector, scale_factor=scale_factor)
        seen = []
        with VideoReader(video) as reader:
            for frame in reader:
                results = analyzer.process(frame.image)
                assert len(results) == n_faces, f"{name} frame {frame.index}"
                seen.append(tuple(r.track for r in results))
                # BlazeFace boxes carry their detection score, also when tracked; Haar boxes have none
                rows = [r.to_row(predictor.labels) for r in results]
                assert all((0.5 <= row["score"] <= 1.0) if detector == "blazeface" else row["score"] is None
                           for row in rows)
        assert set(seen) == {tuple(range(n_faces))}


def test_scale_factor_must_exceed_one(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="scale_factor must be > 1"):
        FrameAnalyzer(predictor, scale_factor=1.0)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 640, 3), np.uint8), "empty frame"),
    (np.zeros((2, 48, 48, 3), np.uint8), "shape"),
    (np.zeros((48, 48, 2), np.uint8), "shape"),
    (np.zeros((48, 48, 3), np.complex64), "dtype"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_invalid_frames_are_rejected(predictor: Predictor, bad, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        FrameAnalyzer(predictor, detector=lambda f: []).process(bad)


def test_gray_and_float_frames_are_handled_and_size_changes_rejected(predictor: Predictor, faces: np.ndarray) -> None:
    box = Box(100, 100, SIDE, SIDE)
    frame = background()
    paste(frame, faces[0], box)
    ref = FrameAnalyzer(predictor, detector=lambda f: [box]).process(frame)[0].probs
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    for variant in (gray, gray[:, :, None], frame.astype(np.float32) / 255.0, frame.astype(np.uint16) * 257):
        (r,) = FrameAnalyzer(predictor, detector=lambda f: [box]).process(variant)
        np.testing.assert_allclose(r.probs, ref, atol=0.02)
    analyzer = FrameAnalyzer(predictor, detector=lambda f: [box])
    analyzer.process(frame)
    with pytest.raises(InvalidImageError, match="frame size changed from 640x480 to 320x240"):
        analyzer.process(cv2.resize(frame, (320, 240)))
    analyzer.reset()
    assert len(analyzer.process(cv2.resize(frame, (320, 240)))) == 1


# -- video I/O --------------------------------------------------------------------------------------
def test_corrupt_and_missing_videos_raise_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 500)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(InvalidVideoError, match="cannot open"):
            VideoReader(path)
    with pytest.raises(InvalidVideoError, match="no such video file"):
        VideoReader(tmp_path / "missing.mp4")


def test_reader_every_and_timestamps(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", [background(t) for t in range(10)])
    assert is_video_file(video) and not is_video_file(EXAMPLES / "happy_0.png")
    with VideoReader(video, every=3) as r:
        assert r.frame_count == 10 and r.fps == pytest.approx(FPS)
        got = [(f.index, f.timestamp_ms, f.image.shape) for f in r]
    assert [g[0] for g in got] == [0, 3, 6, 9]
    np.testing.assert_allclose([g[1] for g in got], [0, 300, 600, 900], atol=1)
    assert {g[2] for g in got} == {(H, W, 3)}


def test_writer_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "out.avi"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, FPS) as w:
            w.write(background())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(out, FPS) as w:
        for t in range(4):
            w.write(background(t))
        with pytest.raises(InvalidVideoError, match="differs"):
            w.write(np.zeros((10, 10, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.avi"]
    assert VideoReader(out).frame_count == 4
    with pytest.raises(InvalidVideoError, match="suffix"):
        VideoWriter(tmp_path / "out.gif", FPS)


# -- fer-infer VIDEO --------------------------------------------------------------------------------
def test_cli_video_csv_columns_frames_and_timestamps(tmp_path: Path, model_dir: Path) -> None:
    video = write_video(tmp_path / "clip.avi", photo_frames("photo_two_faces.jpg", 10))
    out = tmp_path / "frames.csv"
    res = runner.invoke(app, [str(video), "--out", str(out), "--every", "2", "--detect-every", "2",
                              "--model-dir", str(model_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == video_columns(Predictor(model_dir).labels)
    assert reader.fieldnames[:3] == ["frame", "timestamp_ms", "track"]
    assert [int(r["frame"]) for r in rows] == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8]
    for r in rows:
        assert float(r["timestamp_ms"]) == pytest.approx(int(r["frame"]) * 100, abs=1)
        assert sum(float(r[c]) for c in reader.fieldnames if c.startswith("p_")) == pytest.approx(1, abs=1e-4)
        assert r["label"] and r["error"] == "" and r["path"] == str(video)
    assert [r["track"] for r in rows] == ["0", "1"] * 5 and [r["face"] for r in rows] == ["0", "1"] * 5
    # processed frames 0, 4, 8 detect; 2 and 6 reuse the boxes
    assert [r["source"] for r in rows[::2]] == ["detected", "tracked", "detected", "tracked", "detected"]


def test_cli_corrupt_video_is_a_one_line_error(tmp_path: Path, model_dir: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    out = tmp_path / "frames.csv"
    res = runner.invoke(app, [str(bad), "--out", str(out), "--model-dir", str(model_dir)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: cannot open {bad} as a video (unknown format, corrupt or "
                                               "unavailable)"]
    assert not out.exists()
    res = runner.invoke(app, [str(bad), str(EXAMPLES), "--out", str(out)])
    assert res.exit_code == 2 and "one video at a time" in res.output
    for extra in (["--workers", "2"], ["--ray", "local"]):  # refused, not silently ignored
        res = runner.invoke(app, [str(bad), "--out", str(out), *extra])
        assert res.exit_code == 2 and res.output.startswith("error: --ray and --workers are for images")


def test_a_folder_named_like_a_video_is_searched_for_images(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "clips.mkv"
    folder.mkdir()
    (folder / "face.png").write_bytes((EXAMPLES / "happy_0.png").read_bytes())
    assert not is_video_file(folder) and is_video_file(tmp_path / "missing.mkv")  # the latter: "no such video"
    out = tmp_path / "preds.csv"
    res = runner.invoke(app, [str(folder), "--out", str(out), "--model-dir", str(model_dir), "--model", "fast", "-q"])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["path"] == str(folder / "face.png") and row["label"]


# -- examples/camera_app.py -------------------------------------------------------------------------
def test_camera_app_writes_annotated_video_headless(tmp_path: Path, model_dir: Path) -> None:
    video = write_video(tmp_path / "in.avi", photo_frames("photo_one_face.jpg", 8))
    out = tmp_path / "annotated.mp4"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "camera_app.py"), str(video), "--out", str(out),
                           "--model-dir", str(model_dir), "--headless"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with VideoReader(out) as r:
        frames = list(r)
    assert len(frames) == 8 and frames[0].image.shape == (H, W, 3)
    src = cv2.resize(read_image(EXAMPLES / "photo_one_face.jpg"), (W, H))
    # the box outline and bars in track 0's colour: hundreds of pixels near it that the source frame lacks
    # (codec noise alone does not paint this colour)
    near = lambda img: (np.abs(img.astype(int) - np.array(track_color(0))).max(axis=2) < 40)  # noqa: E731
    painted = near(frames[0].image) & ~near(src)
    assert painted.sum() > 400, painted.sum()
    bad = subprocess.run([sys.executable, str(ROOT / "examples" / "camera_app.py"), str(tmp_path / "nope.mp4"),
                          "--headless"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: no such video file: {tmp_path / 'nope.mp4'}"
