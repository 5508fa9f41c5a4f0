"""Does the FER2013-matched crop rule help? PublicTest faces pasted into larger synthetic scenes, classified
after detection with the old margin rule and with the new rule.

    python bench/crop_scenes.py --data ../shared/data/fer2013/fer2013.csv.gz [--model accurate] [--limit 0]
    python bench/crop_scenes.py --data ../shared/data/fer2013/fer2013.csv.gz --by-size --limit 150

Each PublicTest face (48x48) is upscaled to a random side of 96..200 px (bicubic) and pasted at a random
place into a 640x480 scene (a smooth random colour field with pixel noise; seed ``--seed``). Then:

- ``original 48x48``: the FER frame itself, no detection (the upper bound);
- ``haar, 15% margin``: the runtime before issue 13 (Haar on a copy at most 1024 px, box + 15% per side);
- ``blazeface, 15% margin``: the new detector with the old margin rule;
- ``blazeface, FER crop``: the new detector with ``fer_runtime.faces.FER_CROP`` (the runtime's default).

A face counts as found when a detected box overlaps the pasted frame with IoU >= 0.3 (the best one is
used); accuracy is over all faces (a missed face is wrong) and over the found ones. The crop rule was
measured on the same PublicTest faces (bench/crop_geometry.py): three numbers, but not an unseen test.

``--by-size`` prints instead how many faces BlazeFace finds when they are pasted at fixed sides (64..400 px),
with the whole image only (``tiles=0``) and with one level of tiles (``tiles=1``, the image default).
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import cv2
import numpy as np

from fer_runtime import Predictor
from fer_runtime.boxes import Box
from fer_runtime.detectors import BlazeFaceDetector, HaarDetector
from fer_runtime.faces import HAAR_MARGIN, fer_crop
from fer_runtime.tracking import iou
from fer_train.data import load_kaggle_csv

W, H = 640, 480


def scene(face: np.ndarray, rng: np.random.Generator, side: int | None = None) -> tuple[np.ndarray, Box]:
    """A 640x480 BGR scene holding ``face`` (48x48 gray) upscaled (to ``side``, default random 96..200 px),
    and the pasted frame's box."""
    field = rng.uniform(40, 215, (6, 8, 3)).astype(np.float32)
    bg = cv2.resize(field, (W, H), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (H, W, 3))
    img = np.clip(bg, 0, 255).astype(np.uint8)
    side = int(rng.integers(96, 201)) if side is None else side
    x, y = int(rng.integers(0, W - side + 1)), int(rng.integers(0, H - side + 1))
    big = cv2.resize(face.reshape(48, 48), (side, side), interpolation=cv2.INTER_CUBIC)
    img[y:y + side, x:x + side] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    return img, Box(x, y, side, side)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="Kaggle fer2013.csv(.gz)")
    ap.add_argument("--model", default=None, help="classifier variant (default: the manifest's)")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--limit", type=int, default=0, help="only the first N PublicTest faces (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--by-size", action="store_true", help="detection rate by face size instead")
    args = ap.parse_args()

    split = load_kaggle_csv(args.data).splits["PublicTest"]
    n = args.limit or len(split)
    faces, labels = split.x[:n, :, :, 0], split.y[:n]
    if args.by_size:
        by_size(faces, args.model_dir, args.seed)
        return
    predictor = Predictor(args.model_dir, model=args.model, device="cpu")
    blaze, haar = BlazeFaceDetector(args.model_dir), HaarDetector()
    rng = np.random.default_rng(args.seed)

    margin = f"{HAAR_MARGIN:.0%} margin"
    rules = {f"haar, {margin}": (haar, lambda b, w, h: b.expand(HAAR_MARGIN, w, h)),
             f"blazeface, {margin}": (blaze, lambda b, w, h: b.expand(HAAR_MARGIN, w, h)),
             "blazeface, FER crop": (blaze, lambda b, w, h: fer_crop(b))}
    crops: dict[str, list[np.ndarray | None]] = {k: [] for k in rules}
    for face in faces:
        img, truth = scene(face, rng)
        found = {}
        for name, (engine, rule) in rules.items():
            if engine.name not in found:
                boxes = [b for b in engine.detect(img) if iou(b, truth) >= 0.3]
                found[engine.name] = max(boxes, key=lambda b: iou(b, truth)) if boxes else None
            b = found[engine.name]
            crops[name].append(None if b is None else rule(b, W, H).crop(img).copy())

    print(f"Crop rules on {n} PublicTest faces pasted into 640x480 scenes (96..200 px, seed {args.seed}); "
          f"classifier {predictor.variant}; {os.cpu_count()} CPU ({platform.machine()}).\n")
    print("| crop | faces found | accuracy, all faces | accuracy, found faces |")
    print("|---|---:|---:|---:|")
    base = (predictor.predict(faces).argmax(1) == labels).mean()
    print(f"| original 48x48 (no detection) | {n} / {n} | {base:.4f} | {base:.4f} |")
    for name, cs in crops.items():
        idx = [i for i, c in enumerate(cs) if c is not None]
        pred = predictor.predict([cs[i] for i in idx]).argmax(1) if idx else np.zeros(0, int)
        right = int((pred == labels[idx]).sum())
        print(f"| {name} | {len(idx)} / {n} | {right / n:.4f} | {right / max(1, len(idx)):.4f} |")


def by_size(faces: np.ndarray, model_dir: str | None, seed: int) -> None:
    """Print the share of faces BlazeFace finds (IoU >= 0.3) at each pasted side, without and with tiles."""
    engines = {t: BlazeFaceDetector(model_dir, tiles=t) for t in (0, 1)}
    print(f"BlazeFace on {len(faces)} PublicTest faces pasted into 640x480 scenes (seed {seed}); "
          f"{os.cpu_count()} CPU ({platform.machine()}).\n")
    print("| face side (px) | found, whole image (tiles=0) | found, with tiles (tiles=1) |")
    print("|---:|---:|---:|")
    for side in (64, 96, 128, 160, 200, 260, 320, 400):
        rng = np.random.default_rng(seed)
        hits = {t: 0 for t in engines}
        for face in faces:
            img, truth = scene(face, rng, side)
            for t, e in engines.items():
                hits[t] += any(iou(b, truth) >= 0.3 for b in e.detect(img))
        print(f"| {side} | {hits[0] / len(faces):.3f} | {hits[1] / len(faces):.3f} |")


if __name__ == "__main__":
    main()
