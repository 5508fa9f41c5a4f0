"""The choice lists and defaults of the runtime's options, each defined once.

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
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # an --out with one of these is written as jsonl by default

# Face-detector engines, the default first: BlazeFace (ONNX, in the model folder) or OpenCV's Haar cascade
# (fer_runtime.detectors).
DETECTORS = ("blazeface", "haar")

# An image whose longer side is at most the detector's input size (128 px) is taken to be a face crop
# (FER2013's are 48x48): `--faces auto` classifies it whole instead of looking for faces in it (fer_runtime.faces).
FACE_CROP_MAX_SIDE = 128

# Images with more pixels are refused from their header, before any decoding: Pillow's own
# decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS). A BGR image this size takes 537 MB decoded
# (fer_runtime.images).
DEFAULT_MAX_PIXELS = 178_956_970
FOCUS_THRESHOLD = 0.6  # saliency level kept in a figure's "focus" panel (fer-infer and fer-analyze saliency)
