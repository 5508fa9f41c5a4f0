"""The choice lists of the runtime's options, each defined once.

The library validates against these tuples and ``fer-infer`` builds its option types from them
(``Literal[FACE_MODES]``). Only the standard library is imported, so ``fer-infer --help`` stays fast.
"""
from __future__ import annotations

# How faces are found in an image: detect and fall back to the whole image, only detected faces,
# or the whole image is the face (fer_runtime.pipeline.infer_files).
FACE_MODES = ("auto", "detect", "crop")

# Where onnxruntime runs: CUDA if usable else CPU, CPU only, CUDA or an error (fer_runtime.providers).
DEVICES = ("auto", "cpu", "cuda")

# Output formats of the result rows (fer_runtime.results.RowWriter).
FORMATS = ("csv", "jsonl")

# Face-detector engines, the default first: BlazeFace (ONNX, in the model folder) or OpenCV's Haar cascade
# (fer_runtime.detectors).
DETECTORS = ("blazeface", "haar")
