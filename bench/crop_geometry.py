"""Where does the face detector's box fall inside FER2013's 48x48 frames? The measurement behind the crop rule.

    python bench/crop_geometry.py --data ../shared/data/fer2013/fer2013.csv.gz [--split PublicTest] [--upscale 3]

Each face of the split is upscaled (``--upscale``, bicubic) and shown to the detector in two settings:

- ``alone``: the upscaled frame is the whole image (the face fills it, as FER2013 crops do);
- ``in a scene``: the upscaled frame pasted in the middle of a mid-gray canvas twice its side, so the
  detector sees the face at a size it is trained for and never touches the image edge.

For every face found (the best-scoring box) it reads, in units of the frame side F: the box width and
height, and the offset of the box centre from the frame centre; also the eye line's angle. It prints
the detection rate, the quartiles of each quantity, and the crop rule they imply, which is what
``fer_runtime.faces.FER_CROP`` holds: crop side = box width / median(width / F), crop centre = box
centre - median offset x crop side. Only the runtime and ``fer_train.data`` (no TensorFlow) are imported.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.detectors import BlazeFaceDetector
from fer_train.data import load_kaggle_csv


def measure(det: BlazeFaceDetector, faces: np.ndarray, upscale: int, scene: bool) -> dict[str, np.ndarray]:
    """Per found face: width/F, height/F, centre offset x/F and y/F, eye angle (degrees); plus a found mask."""
    side = 48 * upscale
    images = []
    for f in faces:
        big = cv2.cvtColor(cv2.resize(f.reshape(48, 48), (side, side), interpolation=cv2.INTER_CUBIC),
                           cv2.COLOR_GRAY2BGR)
        if scene:
            canvas = np.full((2 * side, 2 * side, 3), 128, np.uint8)
            canvas[side // 2:side // 2 + side, side // 2:side // 2 + side] = big
            big = canvas
        images.append(big)
    origin = side // 2 if scene else 0
    out: dict[str, list[float]] = {k: [] for k in ("w", "h", "dx", "dy", "angle")}
    found = []
    for start in range(0, len(images), 64):
        for boxes in det.detect_batch(images[start:start + 64]):
            found.append(bool(boxes))
            if not boxes:
                continue
            b = max(boxes, key=lambda b: b.score or 0.0)
            cx, cy = b.x + b.w / 2 - origin, b.y + b.h / 2 - origin
            (rx, ry), (lx, ly) = b.keypoints[0], b.keypoints[1]
            out["w"].append(b.w / side)
            out["h"].append(b.h / side)
            out["dx"].append(cx / side - 0.5)
            out["dy"].append(cy / side - 0.5)
            out["angle"].append(math.degrees(math.atan2(ly - ry, lx - rx)))
    return {"found": np.array(found), **{k: np.array(v) for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="Kaggle fer2013.csv(.gz)")
    ap.add_argument("--split", default="PublicTest")
    ap.add_argument("--upscale", type=int, default=3, help="48 px -> 48 x this before detection")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--limit", type=int, default=0, help="only the first N faces (0 = all)")
    args = ap.parse_args()

    split = load_kaggle_csv(args.data).splits[args.split]
    faces = split.x[:args.limit] if args.limit else split.x
    det = BlazeFaceDetector(args.model_dir, threads=1)
    print(f"Crop geometry: BlazeFace ({det.spec.file}) on {len(faces)} {args.split} faces of {args.data.name}, "
          f"upscaled x{args.upscale}; {os.cpu_count()} CPU ({platform.machine()}). Units: the 48x48 frame's side F.\n")
    print("| setting | found | box w / F (p25, p50, p75) | box h / F | centre dx / F | centre dy / F | eye angle (deg) |")
    print("|---|---:|---|---|---|---|---|")
    results = {}
    for name, scene in (("alone", False), ("in a scene", True)):
        r = results[name] = measure(det, faces, args.upscale, scene)

        def q(k: str) -> str:
            a, b, c = np.percentile(r[k], [25, 50, 75])
            return f"{a:+.3f}, **{b:+.3f}**, {c:+.3f}" if k in ("dx", "dy") else f"{a:.3f}, **{b:.3f}**, {c:.3f}"

        print(f"| {name} | {r['found'].mean():.3f} | {q('w')} | {q('h')} | {q('dx')} | {q('dy')} | "
              f"{np.percentile(r['angle'], 25):+.1f}, **{np.median(r['angle']):+.1f}**, "
              f"{np.percentile(r['angle'], 75):+.1f} |")
    r = results["in a scene"]
    w, dx, dy = (float(np.median(r[k])) for k in ("w", "dx", "dy"))
    print(f"\nCrop rule (from 'in a scene'): side = box width x {1 / w:.3f}; centre = box centre + "
          f"({-dx:+.3f}, {-dy:+.3f}) x side  ->  FER_CROP = CropRule(scale={1 / w:.3f}, dx={-dx:.3f}, dy={-dy:.3f})")


if __name__ == "__main__":
    main()
