"""Write ``examples/video/two_faces.mp4``: the two-face example photo drifting about, for ``fer-infer`` and the camera app.

    python examples/make_video.py

640x480, 10 fps, 4 s; the scene pans sideways and a little up and down (a replicated border fills the edge).
Needs only numpy and OpenCV (no TensorFlow).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_runtime.images import read_image
from fer_runtime.video import VideoWriter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "video" / "two_faces.mp4"
W, H, FPS, SECONDS = 640, 480, 10, 4


def main() -> None:
    photo = cv2.resize(read_image(ROOT / "examples" / "images" / "photo_two_faces.jpg"), (W, H))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(OUT, FPS) as video:
        for t in range(FPS * SECONDS):
            dx, dy = 25 * np.sin(t / 7), 8 * np.sin(t / 4)
            shift = np.float32([[1, 0, dx], [0, 1, dy]])
            video.write(cv2.warpAffine(photo, shift, (W, H), borderMode=cv2.BORDER_REPLICATE))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
