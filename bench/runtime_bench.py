"""Runtime benchmark of the TensorFlow-free path: cold start, per-frame video latency, crop throughput, peak RSS.

Usage (from the repo, with the ``cpu`` extra installed; no TensorFlow is imported):

    python bench/runtime_bench.py [--model-dir models] [--variants accurate fast fast-int8] [--frames 60]
                                  [--detectors blazeface blazeface:tiles=1 haar]

Prints one Markdown table with a column per variant present in the manifest (the others are named in a note):

- cold start: a fresh ``python`` process timing ``import fer_runtime`` plus ``Predictor(model=...)``
  (manifest read, SHA-256 check, session creation); median of ``--repeats``;
- per-frame latency p50 / p95 of ``FrameAnalyzer.process`` (detection, tracking, one batch, smoothing) on a
  synthetic 640x480 video with 1, 2 and 3 faces moving a few pixels per frame, for each ``--detect-every`` and
  each face detector (``blazeface``, FrameAnalyzer's default: the whole frame; ``blazeface:tiles=1``, also
  one level of tiles, as for images; ``haar`` on a 320 px copy); frames are decoded outside the timer, so the
  figures exclude video decoding;
- each face detector alone on the 1-face video's 640x480 frames (p50 / p95), measured interleaved
  (every engine on a frame before the next frame, so a load change hits all of them alike), with each
  engine's p50 against the first's (the default, ``blazeface``);
- throughput on 48x48 crops at batch 1, 32 and 256 (``Predictor.predict``, preprocessing included);
  median of ``--repeats`` runs;
- peak RSS of this process (``resource.getrusage``), which loads only the runtime.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
W, H, SIDE = 640, 480, 150

COLD = """import time
t = time.perf_counter()
import fer_runtime
from fer_runtime import Predictor
Predictor(model_dir={model_dir!r}, model={variant!r}, device="cpu")
print(time.perf_counter() - t)
"""


def cold_start(model_dir: str, variant: str, repeats: int) -> float:
    """Median seconds for import + Predictor creation in a fresh interpreter."""
    code = COLD.format(model_dir=model_dir, variant=variant)
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
            for _ in range(repeats)]
    return statistics.median(runs)


def background() -> np.ndarray:
    """A 640x480 BGR colour gradient."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.clip(np.stack([60 + 100 * xx / W, 80 + 60 * yy / H, 140 - 60 * xx / W], axis=2), 0, 255).astype(np.uint8)


def place(frame: np.ndarray, crop: np.ndarray, x: int, y: int) -> None:
    frame[y:y + SIDE, x:x + SIDE] = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)


def detector(spec: str):
    """``blazeface``, ``blazeface:tiles=1`` or ``haar`` -> an engine as FrameAnalyzer builds it by name."""
    from fer_runtime.detectors import BlazeFaceDetector, HaarDetector
    from fer_runtime.frames import VIDEO_DETECT_MAX_SIDE, VIDEO_TILES

    name, _, opts = spec.partition(":")
    if name == "haar":
        return HaarDetector(max_side=VIDEO_DETECT_MAX_SIDE)
    kw = {"tiles": VIDEO_TILES, **{k: int(v) for k, v in (o.split("=") for o in opts.split(",") if o)}}
    return BlazeFaceDetector(**kw)


def face_crops(engines: list) -> list[np.ndarray]:
    """Three faces that every engine finds when pasted at 150 px: the photos' faces, then FER crops."""
    from fer_runtime import detect_faces, read_image

    candidates = []
    for name in ("photo_one_face.jpg", "photo_two_faces.jpg"):
        im = read_image(EXAMPLES / name)
        candidates += [b.crop(im).copy() for b in detect_faces(im, "haar", margin=0.05)]
    candidates += [cv2.cvtColor(read_image(p), cv2.COLOR_GRAY2BGR) for p in sorted(EXAMPLES.glob("*_0.png"))]
    chosen = []
    for c in candidates:
        hits = 0
        for x in range(20, W - SIDE, 60):
            f = background()
            place(f, c, x, 150)
            hits += all(len(e.detect(f)) == 1 for e in engines)
        if hits == len(range(20, W - SIDE, 60)):
            chosen.append(c)
        if len(chosen) == 3:
            return chosen
    raise SystemExit("fewer than 3 example faces are detected reliably")


def scene_video(path: Path, crops: list[np.ndarray], n_faces: int, frames: int) -> Path:
    """Write a 640x480 MJPG video of ``n_faces`` faces drifting sideways."""
    bg = background()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    for t in range(frames):
        f = bg.copy()
        dx = int(10 * np.sin(t / 6))
        for i in range(n_faces):
            place(f, crops[i], 30 + i * 205 + dx, 150 + (i % 2) * 40)
        writer.write(f)
    writer.release()
    return path


def frame_latency(predictor, video: Path, detect_every: int, engine) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, mean faces per frame) of FrameAnalyzer.process, decoding outside the timer."""
    from fer_runtime.frames import FrameAnalyzer
    from fer_runtime.video import VideoReader

    analyzer = FrameAnalyzer(predictor, detect_every=detect_every, detector=engine)
    times, faces = [], []
    for timed in (False, True):  # a warm-up pass, then the timed one
        analyzer.reset()
        with VideoReader(video) as reader:
            for frame in reader:
                t = time.perf_counter()
                res = analyzer.process(frame.image)
                if timed:
                    times.append((time.perf_counter() - t) * 1000)
                    faces.append(len(res))
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95), float(np.mean(faces))


def detector_latency(engines: dict[str, object], video: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """(p50 ms, p95 ms) of each engine's ``detect`` on the frames of ``video``, interleaved, after a warm-up."""
    from fer_runtime.video import VideoReader

    with VideoReader(video) as reader:
        frames = [f.image for f in reader]
    for f in frames[:5]:
        for e in engines.values():
            e.detect(f)
    times: dict[str, list[float]] = {d: [] for d in engines}
    for _ in range(repeats):
        for f in frames:
            for d, e in engines.items():
                t = time.perf_counter()
                e.detect(f)
                times[d].append((time.perf_counter() - t) * 1000)
    return {d: tuple(float(q) for q in np.percentile(ts, [50, 95])) for d, ts in times.items()}


def throughput(predictor, crops48: np.ndarray, batch: int, repeats: int) -> float:
    """Median images per second of ``predict`` on 48x48 crops at one batch size."""
    predictor.batch_size = batch
    x = crops48[np.arange(batch) % len(crops48)]
    calls = max(1, 256 // batch)
    predictor.predict(x)  # warm-up
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            predictor.predict(x)
        rates.append(calls * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="exported model folder (default: the packaged models)")
    ap.add_argument("--variants", nargs="+", default=["accurate", "fast", "fast-int8"])
    ap.add_argument("--frames", type=int, default=60, help="timed frames per video")
    ap.add_argument("--detect-every", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--detectors", nargs="+", default=["blazeface", "blazeface:tiles=1", "haar"],
                    help="face detectors for the per-frame rows: blazeface[:tiles=N] or haar")
    args = ap.parse_args()

    import onnxruntime as ort

    from fer_runtime import Predictor, default_model_dir, read_image
    from fer_runtime.images import preprocess
    from fer_runtime.manifest import read_manifest

    model_dir = str(args.model_dir or default_model_dir())
    present = read_manifest(Path(model_dir)).variants
    variants = [v for v in args.variants if v in present]
    missing = [v for v in args.variants if v not in present]
    if not variants:
        raise SystemExit(f"none of {', '.join(args.variants)} is in {model_dir}")
    engines = {d: detector(d) for d in args.detectors}
    crops = face_crops(list(engines.values()))
    crops48 = np.stack([preprocess(read_image(p)) for p in sorted(EXAMPLES.glob("*_0.png"))]).astype(np.uint8)

    rows: dict[str, list[str]] = {}
    notes = []

    def put(name: str, value: str) -> None:
        rows.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        videos = {n: scene_video(Path(tmp) / f"{n}.avi", crops, n, args.frames) for n in (1, 2, 3)}
        for v in variants:
            put("cold start: import + session (ms)", f"{cold_start(model_dir, v, args.repeats) * 1000:.0f}")
            predictor = Predictor(model_dir, model=v, device="cpu")
            for d, engine in engines.items():
                for k in args.detect_every:
                    for n, video in videos.items():
                        p50, p95, seen = frame_latency(predictor, video, k, engine)
                        if abs(seen - n) > 0.05:
                            notes.append(f"{v}, {d}, {n} face(s), detect every {k}: {seen:.2f} faces found per frame")
                        put(f"per frame, {d}, {n} face{'s' if n > 1 else ''}, detect every {k}: p50 / p95 (ms)",
                            f"{p50:.1f} / {p95:.1f}")
            for b in (1, 32, 256):
                put(f"48x48 crops, batch {b} (img/s)", f"{throughput(predictor, crops48, b, args.repeats):.0f}")
        alone = detector_latency(engines, videos[1], args.repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    scale = 1024 if sys.platform == "darwin" else 1  # bytes on macOS
    rss /= scale

    print(f"Runtime benchmark: {model_dir}; onnxruntime {ort.__version__}, OpenCV {cv2.__version__}, "
          f"{machine_line()}; {args.frames} frames per video, median of {args.repeats}.\n")
    print("| measure | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(values) + " |")
    print(f"| peak RSS of this process, all variants loaded (MB) | {rss:.0f}" + " |" * len(variants))
    print()
    first = next(iter(alone.values()))[0]
    print("| face detector alone, one 640x480 frame (interleaved) | p50 (ms) | p95 (ms) | p50 / first's p50 |")
    print("|---|---:|---:|---:|")
    for d, (p50, p95) in alone.items():
        print(f"| {d} | {p50:.1f} | {p95:.1f} | {p50 / first:.1f}x |")
    print()
    for v in missing:
        print(f"note: variant {v!r} is not in {model_dir}/manifest.json; skipped  ")
    for n in notes:
        print(f"note: {n}  ")


if __name__ == "__main__":
    main()
