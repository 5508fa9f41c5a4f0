"""Regenerate ``examples/images/`` from the real FER2013 rows in ``tests/fixtures/fer2013_small.csv.gz``.

    python examples/make_examples.py

* ``<class>_0.png``: the first PublicTest row of each class, as the original 48x48 gray face crop.
* ``photo_two_faces.jpg`` / ``photo_one_face.jpg``: synthetic "photos", FER test faces upscaled and pasted
  onto a smooth background, chosen among faces the Haar cascade finds, to show ``--faces auto`` detecting.
Needs only numpy and OpenCV (no TensorFlow).
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.faces import detect_faces
from fer_runtime.images import write_image
from fer_runtime.labels import IMAGE_SIZE, LABELS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fer2013_small.csv.gz"
OUT = ROOT / "examples" / "images"


def face(row: dict[str, str]) -> np.ndarray:
    return np.array(row["pixels"].split(), np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def background(h: int, w: int, seed: int) -> np.ndarray:
    """A soft colour gradient with blurred noise, standing in for a room."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([120 + 60 * y / h, 140 + 40 * x / w, 170 - 50 * y / h], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 9)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def paste(photo: np.ndarray, gray_face: np.ndarray, x: int, y: int, side: int) -> None:
    big = cv2.resize(gray_face, (side, side), interpolation=cv2.INTER_CUBIC)
    photo[y:y + side, x:x + side] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def detectable(gray_face: np.ndarray, side: int) -> bool:
    canvas = background(3 * side, 3 * side, 0)
    paste(canvas, gray_face, side, side, side)
    return len(detect_faces(canvas)) == 1


def main() -> None:
    rows = list(csv.DictReader(gzip.open(FIXTURE, "rt", encoding="utf-8")))
    OUT.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(LABELS):
        row = next(r for r in rows if r["Usage"] == "PublicTest" and int(r["emotion"]) == k)
        write_image(OUT / f"{name.lower()}_0.png", face(row))

    def pick(label: str, side: int) -> np.ndarray:
        k = LABELS.index(label)
        return next(face(r) for r in rows
                    if r["Usage"] == "PrivateTest" and int(r["emotion"]) == k and detectable(face(r), side))

    two = background(400, 640, 1)
    paste(two, pick("Happy", 150), 90, 110, 150)
    paste(two, pick("Surprise", 150), 390, 130, 150)
    cv2.imencode(".jpg", two, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tofile(OUT / "photo_two_faces.jpg")

    one = background(480, 640, 2)
    paste(one, pick("Sad", 200), 300, 120, 200)
    cv2.imencode(".jpg", one, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tofile(OUT / "photo_one_face.jpg")


if __name__ == "__main__":
    main()
