"""fer_runtime: TensorFlow-free facial-expression recognition over the exported ONNX models.

    from fer_runtime import analyze
    faces = analyze("photo.jpg")             # [FaceEmotion(box, score, label, confidence, probabilities, source)]

    from fer_runtime import Predictor, detect_faces, read_image
    p = Predictor()                          # packaged models; CUDA if usable, else CPU
    image = read_image("photo.jpg")          # uint8 BGR or gray; non-ASCII paths fine
    faces = [b.crop(image) for b in detect_faces(image)]
    probs = p.predict(faces)                 # (N, 7) float32, columns in p.labels order
    maps = p.saliency(faces)                 # |gradient| maps in [0, 1] at each face's size

Importing this package is cheap: numpy, OpenCV and onnxruntime load only when a name below is first used.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fer_runtime.errors import (DistributedError, FerError, FerRuntimeError, ImageTooLargeError, InferenceError,
                                InvalidImageError, InvalidVideoError, ManifestVersionError, MissingDependencyError,
                                MissingOutputError, ModelIntegrityError, ModelNotFoundError, ProviderUnavailableError,
                                ResumeError)
from fer_runtime.labels import IMAGE_SIZE, LABELS, NUM_CLASSES

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {
    "analyze": "fer_runtime.oneshot",
    "FaceEmotion": "fer_runtime.oneshot",
    "Predictor": "fer_runtime.predictor",
    "default_model_dir": "fer_runtime.predictor",
    "Box": "fer_runtime.faces",
    "detect_faces": "fer_runtime.faces",
    "BlazeFaceDetector": "fer_runtime.detectors",
    "HaarDetector": "fer_runtime.detectors",
    "read_image": "fer_runtime.images",
    "preprocess": "fer_runtime.images",
    "saliency_figure": "fer_runtime.overlay",
    "infer_files": "fer_runtime.pipeline",
    "FrameAnalyzer": "fer_runtime.frames",
    "FaceResult": "fer_runtime.frames",
    "VideoReader": "fer_runtime.video",
}

__all__ = ["DistributedError", "FerError", "FerRuntimeError", "ImageTooLargeError", "InferenceError", "InvalidImageError",
           "InvalidVideoError", "ManifestVersionError", "MissingDependencyError", "MissingOutputError", "ModelIntegrityError",
           "ModelNotFoundError", "ProviderUnavailableError", "ResumeError", "IMAGE_SIZE", "LABELS", "NUM_CLASSES", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from fer_runtime.detectors import BlazeFaceDetector, HaarDetector
    from fer_runtime.faces import Box, detect_faces
    from fer_runtime.frames import FaceResult, FrameAnalyzer
    from fer_runtime.images import preprocess, read_image
    from fer_runtime.oneshot import FaceEmotion, analyze
    from fer_runtime.overlay import saliency_figure
    from fer_runtime.pipeline import infer_files
    from fer_runtime.predictor import Predictor, default_model_dir
    from fer_runtime.video import VideoReader


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fer_runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
