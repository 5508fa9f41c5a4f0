"""Face boxes: pixel geometry, the detector's score and keypoints, and cropping (padded past the image edges)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the original image (x, y = top-left corner).

    ``score`` is the detector's confidence in [0, 1] (None when the engine gives none, e.g. Haar, or for a
    whole-image box); ``keypoints`` are the detector's landmarks in image pixels (BlazeFace: right eye, left eye,
    nose tip, mouth, right ear tragion, left ear tragion, as seen in the image: "right eye" is the subject's
    right, on the image's left). Neither takes part in equality: two boxes are equal when their pixels are.
    A box may extend past the image edges; :meth:`crop` pads such a crop.
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = field(default=None, compare=False)
    keypoints: tuple[Point, ...] = field(default=(), compare=False)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The box's region of ``image``: a view if it lies inside, else a copy padded by replicating the edge."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = self.x, self.y, self.x + self.w, self.y + self.h
        if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
            return image[y0:y1, x0:x1]
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if cx1 <= cx0 or cy1 <= cy0:  # entirely outside: nothing to replicate from
            return np.zeros((max(1, self.h), max(1, self.w), *image.shape[2:]), image.dtype)
        inside = image[cy0:cy1, cx0:cx1]
        pad = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1)) + ((0, 0),) * (image.ndim - 2)
        return np.pad(inside, pad, mode="edge")  # any dtype and channel count (cv2 refuses bool, int64)

    def expand(self, margin: float, width: int, height: int) -> "Box":
        """Grow by ``margin`` of the box size on every side, clipped to a width x height image."""
        dx, dy = int(round(self.w * margin)), int(round(self.h * margin))
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        return replace(self, x=x0, y=y0, w=x1 - x0, h=y1 - y0)
