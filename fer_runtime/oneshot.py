"""The one-call API: :func:`analyze` finds the faces in an image (or an image file) and classifies each.

    from fer_runtime import analyze
    for face in analyze("photo.jpg"):
        print(face.box, face.score, face.label, face.confidence, face.probabilities["Happy"])

The faces are chosen by the same rule as ``fer-infer --faces`` (:func:`fer_runtime.faces.face_regions`); the
default :class:`~fer_runtime.predictor.Predictor` of each (model folder, variant) is built once and shared.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime.choices import FACE_MODES
from fer_runtime.detectors import DEFAULT_DETECTOR, FaceDetector, get_detector
from fer_runtime.errors import InvalidImageError
from fer_runtime.faces import Box, face_regions
from fer_runtime.images import read_image
from fer_runtime.predictor import Predictor

__all__ = ["FaceEmotion", "analyze", "default_predictor"]


@dataclass(frozen=True)
class FaceEmotion:
    """One classified face.

    ``box``: the crop that was classified, in image pixels (FER2013-framed around the detected face; it may reach
    past the image edge); ``score``: the detector's confidence (None for a whole-image crop or a Haar box);
    ``label`` and ``confidence``: the most probable class and its probability; ``probabilities``: every class
    (label -> probability, in the model's label order); ``source``: ``"detected"`` or ``"whole"``.
    """

    box: Box
    score: float | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    source: str


_predictors: dict[tuple[str, str | None], Predictor] = {}
_predictors_lock = threading.Lock()


def default_predictor(model: str | None = None, model_dir: str | os.PathLike[str] | None = None) -> Predictor:
    """The shared ``Predictor(model_dir, model)`` (device ``auto``), built on first use; safe from many threads."""
    key = (str(Path(model_dir).absolute()) if model_dir is not None else "", model)
    with _predictors_lock:
        if key not in _predictors:
            _predictors[key] = Predictor(model_dir, model=model)
        return _predictors[key]


def analyze(image_or_path: Any, model: str | Predictor | None = None,
            detector: str | FaceDetector | None = None, *, faces: str = "auto",
            model_dir: str | os.PathLike[str] | None = None) -> list[FaceEmotion]:
    """The faces in an image and the expression of each, left to right.

    ``image_or_path``: a path (``str`` or ``os.PathLike``, read with :func:`fer_runtime.read_image`) or an image
    array (gray, BGR or BGRA, any dtype). ``model``: a variant of the manifest (default its default variant)
    or a :class:`Predictor` to use; ``detector``: ``"blazeface"`` (default), ``"haar"`` or an engine object.
    ``faces`` is the rule of ``fer-infer --faces``: with ``auto`` an image up to 128 px is one face (source
    ``whole``) and a larger one is searched for faces; a photo with no face gives an empty list.
    ``model_dir``: the model folder (default the packaged models).

    Raises :class:`InvalidImageError` for an unreadable file or unusable array, and the :class:`Predictor`'s
    errors (ModelNotFoundError, ModelIntegrityError, ...) for the models.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    image = _image(image_or_path)
    predictor = model if isinstance(model, Predictor) else default_predictor(model, model_dir)
    engine = get_detector(detector or DEFAULT_DETECTOR, predictor.model_dir) if faces != "crop" else DEFAULT_DETECTOR
    regions = face_regions(image, faces, engine)
    if not regions:
        return []
    labels = predictor.labels
    probs = predictor.predict([box.crop(image) for box, _ in regions])
    out = []
    for (box, source), p in zip(regions, probs):
        k = int(np.argmax(p))
        out.append(FaceEmotion(box=box, score=box.score, label=labels[k], confidence=float(p[k]),
                               probabilities={l: float(v) for l, v in zip(labels, p)}, source=source))
    return out


def _image(image_or_path: Any) -> np.ndarray:
    """A path read from disk, or an array checked to be one image."""
    if isinstance(image_or_path, (str, os.PathLike)):
        return read_image(image_or_path)
    if not isinstance(image_or_path, np.ndarray):
        raise InvalidImageError(f"expected an image array or a path, got {type(image_or_path).__name__}")
    im = image_or_path
    if im.ndim not in (2, 3) or (im.ndim == 3 and im.shape[2] not in (1, 3, 4)) or im.size == 0:
        raise InvalidImageError(f"an image must be HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA), got shape {im.shape}")
    return im
