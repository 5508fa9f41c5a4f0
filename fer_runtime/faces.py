"""Finding the faces in an image and cropping each the way FER2013's 48x48 frames were cropped.

The engines live in :mod:`fer_runtime.detectors`; this module turns their boxes into the crops the
classifier sees. For BlazeFace boxes that is :data:`FER_CROP`, measured by ``bench/crop_geometry.py``:
on FER2013's PublicTest faces the detector's box is 0.847 of the frame side wide (median) and its centre
lies 0.090 of a side below the frame centre, so a crop is a square 1.18 box widths wide, centred 0.09 of
its side above the box centre. Haar boxes keep the older rule, a 15% margin on every side.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fer_runtime.boxes import Box
from fer_runtime.choices import FACE_CROP_MAX_SIDE
from fer_runtime.detectors import DEFAULT_DETECTOR, HAAR_MAX_SIDE, FaceDetector, HaarDetector, get_detector

__all__ = ["Box", "CropRule", "FER_CROP", "HAAR_MARGIN", "FACE_CROP_MAX_SIDE", "WHOLE", "DETECTED", "detect_faces",
           "detect_faces_batch", "face_regions", "fer_crop", "is_face_crop"]

DETECT_MAX_SIDE = HAAR_MAX_SIDE  # the earlier name
HAAR_MARGIN = 0.15  # Haar boxes are grown by this fraction of their size on every side
WHOLE, DETECTED = "whole", "detected"  # where a classified crop came from: the whole image, or a detector box


@dataclass(frozen=True)
class CropRule:
    """A square crop from a detector box: side = ``scale`` x box width, centre = box centre + (dx, dy) x side."""

    scale: float
    dx: float
    dy: float

    def apply(self, box: Box) -> Box:
        side = max(1, int(round(self.scale * box.w)))
        cx = box.x + box.w / 2 + self.dx * side
        cy = box.y + box.h / 2 + self.dy * side
        return replace(box, x=int(round(cx - side / 2)), y=int(round(cy - side / 2)), w=side, h=side)


# measured with `python bench/crop_geometry.py --data ../shared/data/fer2013/fer2013.csv.gz` (README, "Crops")
FER_CROP = CropRule(scale=1.18, dx=0.0, dy=-0.09)


def fer_crop(box: Box, rule: CropRule = FER_CROP) -> Box:
    """The FER2013-framed crop around a BlazeFace box (it may extend past the image: :meth:`Box.crop` pads)."""
    return rule.apply(box)


def is_face_crop(image: np.ndarray) -> bool:
    """True for an image small enough to be a face crop itself (longer side <= :data:`FACE_CROP_MAX_SIDE`)."""
    return max(image.shape[:2]) <= FACE_CROP_MAX_SIDE


def _crops(image: np.ndarray, boxes: list[Box], engine: FaceDetector, margin: float | None) -> list[Box]:
    """Detector boxes -> classifier crops: the FER rule for BlazeFace, a margin (clipped to the image) otherwise."""
    h, w = image.shape[:2]
    if margin is None and engine.name != "haar":
        return [fer_crop(b) for b in boxes]
    m = HAAR_MARGIN if margin is None else margin
    return [b.expand(m, w, h) for b in boxes]


def _engine(detector: str | FaceDetector, model_dir: str | os.PathLike[str] | None, min_face: float | None,
            max_side: int | None, scale_factor: float | None) -> FaceDetector:
    haar_opts = {k: v for k, v in (("min_face", min_face), ("max_side", max_side), ("scale_factor", scale_factor))
                 if v is not None}
    if haar_opts:
        if detector != "haar":
            raise ValueError(f"min_face, max_side and scale_factor are options of detector='haar', not {detector!r}")
        return HaarDetector(**haar_opts)
    return get_detector(detector, model_dir)


def detect_faces(image: np.ndarray, detector: str | FaceDetector = DEFAULT_DETECTOR, *, margin: float | None = None,
                 model_dir: str | os.PathLike[str] | None = None, min_face: float | None = None,
                 max_side: int | None = None, scale_factor: float | None = None) -> list[Box]:
    """The faces in ``image`` (gray, BGR or BGRA, any dtype) as crops for the classifier, left to right.

    ``detector``: ``"blazeface"`` (default; the ONNX detector listed in ``model_dir``'s manifest, default the
    packaged models), ``"haar"``, or an engine object (:mod:`fer_runtime.detectors`). Each box carries the
    detector's ``score`` (None for Haar) and ``keypoints``. BlazeFace boxes are cropped by :data:`FER_CROP`
    (square, and possibly reaching past the image edge); Haar boxes grow by :data:`HAAR_MARGIN` and are clipped.
    ``margin`` replaces either rule by that margin. ``min_face``, ``max_side`` and ``scale_factor`` configure
    the Haar cascade (see :class:`fer_runtime.detectors.HaarDetector`).
    """
    engine = _engine(detector, model_dir, min_face, max_side, scale_factor)
    return _crops(image, engine.detect(image), engine, margin)


def detect_faces_batch(images: Sequence[np.ndarray], detector: str | FaceDetector = DEFAULT_DETECTOR, *,
                       margin: float | None = None, model_dir: str | os.PathLike[str] | None = None) -> list[list[Box]]:
    """:func:`detect_faces` for many images at once (BlazeFace runs them through its graph in batches)."""
    engine = get_detector(detector, model_dir)
    return [_crops(im, boxes, engine, margin) for im, boxes in zip(images, engine.detect_batch(images))]


def face_regions(image: np.ndarray, faces: str = "auto", detector: str | FaceDetector = DEFAULT_DETECTOR, *,
                 margin: float | None = None,
                 model_dir: str | os.PathLike[str] | None = None) -> list[tuple[Box, str]]:
    """The crops of ``image`` to classify under the ``faces`` rule, each with its source (:data:`WHOLE` or
    :data:`DETECTED`), the rule ``fer-infer --faces`` and :func:`fer_runtime.analyze` share.

    ``crop``: the whole image; ``auto``: the whole image if it is small enough to be a face crop itself
    (:func:`is_face_crop`), else the detected faces; ``detect``: the detected faces. Detection (possibly
    finding none) is :func:`detect_faces` with ``detector``, ``margin`` and ``model_dir``.
    """
    h, w = image.shape[:2]
    if faces == "crop" or (faces == "auto" and is_face_crop(image)):
        return [(Box(0, 0, w, h), WHOLE)]
    return [(b, DETECTED) for b in detect_faces(image, detector, margin=margin, model_dir=model_dir)]
