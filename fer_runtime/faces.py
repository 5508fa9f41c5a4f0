"""Face detection with OpenCV's frontal-face Haar cascade, and cropping with a margin."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from fer_runtime.images import to_uint8

CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 1024  # detection runs on a copy no larger than this; boxes are mapped back
_cascade: cv2.CascadeClassifier | None = None
_lock = threading.Lock()  # CascadeClassifier is not documented as thread-safe


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the original image (x, y = top-left corner)."""

    x: int
    y: int
    w: int
    h: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The box's region of ``image`` (a view)."""
        return image[self.y:self.y + self.h, self.x:self.x + self.w]

    def expand(self, margin: float, width: int, height: int) -> "Box":
        """Grow by ``margin`` of the box size on every side, clipped to a width x height image."""
        dx, dy = int(round(self.w * margin)), int(round(self.h * margin))
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        return Box(x0, y0, x1 - x0, y1 - y0)


def _get_cascade() -> cv2.CascadeClassifier:
    global _cascade
    if _cascade is None:
        path = cv2.data.haarcascades + CASCADE_FILE
        c = cv2.CascadeClassifier(path)
        if c.empty():
            raise RuntimeError(f"cannot load the OpenCV Haar cascade {path}")
        _cascade = c
    return _cascade


def detect_faces(image: np.ndarray, margin: float = 0.15, min_face: float = 0.04,
                 max_side: int = DETECT_MAX_SIDE, scale_factor: float = 1.1) -> list[Box]:
    """Find frontal faces in ``image`` (gray, BGR or BGRA, any dtype).

    Returns boxes in original-image pixels, each grown by ``margin`` (fraction of the face size per side)
    and clipped to the image, ordered left to right. ``min_face`` is the smallest face side as a fraction
    of the image's shorter side (but at least the cascade's 24 px). Large images are searched on a copy
    downscaled to ``max_side`` pixels. ``scale_factor`` is the cascade's pyramid step (larger: faster, and
    more faces between two scales are missed).
    """
    img = to_uint8(np.asarray(image))
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    height, width = img.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = cv2.resize(img, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else img
    small = cv2.equalizeHist(small)
    side = max(24, int(min(small.shape[:2]) * min_face))
    if min(small.shape[:2]) < side:
        return []
    with _lock:
        found = _get_cascade().detectMultiScale(small, scaleFactor=scale_factor, minNeighbors=5, minSize=(side, side))
    boxes = [Box(int(round(x / scale)), int(round(y / scale)), int(round(w / scale)), int(round(h / scale)))
             .expand(margin, width, height) for (x, y, w, h) in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: (b.x, b.y))
