"""Face detectors behind one interface: BlazeFace (ONNX, the default) and OpenCV's Haar cascade.

Every engine maps an image (gray, BGR or BGRA, any dtype) to the faces it finds, as :class:`Box` es in the
image's pixels, ordered left to right, each with the detector's own box (not yet cropped the FER2013 way:
that is :func:`fer_runtime.faces.fer_crop`), a ``score`` and, for BlazeFace, six keypoints.

- ``blazeface``: MediaPipe's BlazeFace short-range model (Apache-2.0), converted to ONNX by
  ``python -m fer_export.detector_build`` and listed, with its sha256, under ``detectors`` in the manifest;
  it is verified on load like the classifiers and run by onnxruntime. The image is letterboxed into the
  128x128 input; the 896 anchors are decoded (box = regression / 128 + anchor centre, score = sigmoid)
  and overlapping boxes are removed with ``cv2.dnn.NMSBoxes``. The model wants faces spanning about a
  quarter of what it sees, so by default it also looks at one level of overlapping tiles (all views in
  one batched run), which reaches faces down to about an eighth of the image's longer side.
- ``haar``: OpenCV's frontal-face cascade (no score; slower, misses more faces).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from fer_runtime import providers as prov
from fer_runtime.boxes import Box
from fer_runtime.choices import DETECTORS
from fer_runtime.errors import ModelIntegrityError, ModelNotFoundError, ProviderUnavailableError, first_line
from fer_runtime.images import to_bgr, to_gray_uint8
from fer_runtime.manifest import DetectorEntry, Manifest, read_manifest
from fer_runtime.model_files import read_graph

DEFAULT_DETECTOR = DETECTORS[0]
HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"
HAAR_MAX_SIDE = 1024  # Haar runs on a copy no larger than this; boxes are mapped back


class FaceDetector(Protocol):
    """What every engine offers: one image, or many at once (batched where the engine can)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Box]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]: ...


# -- BlazeFace ------------------------------------------------------------------------------------

def ssd_anchors(input_size: int, strides: Sequence[int], offset: float = 0.5) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1] of MediaPipe's SSD anchor calculator with aspect ratio 1 and an
    interpolated scale: two anchors per cell for every layer of a stride (short range: 16x16x2, then 8x8x6).
    ValueError unless every stride is a positive integer no larger than ``input_size``."""
    if not strides or any(not isinstance(st, int) or not 0 < st <= input_size for st in strides):
        raise ValueError(f"strides must be positive integers up to the input size {input_size}, got {strides}")
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = input_size // strides[i]
        per_cell = 2 * (j - i)
        centres = (np.arange(cells, dtype=np.float32) + offset) / cells
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(grid, per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Fit a BGR uint8 image into ``size x size`` keeping its aspect ratio, centred on black.

    Returns (RGB uint8 size x size x 3, scale, pad_x, pad_y): input pixel = image pixel * scale + pad.
    """
    h, w = image_bgr.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    px, py = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size, 3), np.uint8)
    out[py:py + nh, px:px + nw] = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    return out, scale, px, py


# What this module feeds the detector graph (blazeface_input, transposed to NCHW). fer_export.detector_build writes
# it into the manifest's detector input entry, and BlazeFaceDetector refuses an entry that declares otherwise.
BLAZEFACE_INPUT_FORMAT: dict[str, Any] = {"layout": "NCHW", "color": "rgb", "range": [-1, 1]}


def blazeface_input(letterboxed: np.ndarray) -> np.ndarray:
    """Letterboxed RGB uint8 pixels (any leading dims, channels last) as BlazeFace's float32 input in [-1, 1]."""
    return letterboxed.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


class BlazeFaceDetector:
    """MediaPipe BlazeFace (short range) on onnxruntime, from the checksummed file in the model folder.

    Args:
        model_dir: folder whose ``manifest.json`` lists the detector; default the packaged models.
        name: the manifest's ``detectors`` key.
        min_score: lowest detection score kept (the sigmoid of the model's logit); default the manifest's
            ``decoding.min_score`` (MediaPipe's 0.5).
        nms_iou: boxes overlapping a better one by more than this IoU are dropped; default the manifest's
            ``decoding.nms_iou`` (0.3).
        device, providers, threads: as for :class:`fer_runtime.Predictor` (default CPU: the graph is tiny).
        batch_size: views per ``session.run`` in :meth:`detect_batch`.
        tiles: levels of tiles searched besides the whole image (see :func:`tile_regions`); the short-range
            model needs a face to span about a quarter of the view's longer side, so one level (tiles half the
            image's side) finds faces down to about an eighth of it. 0 looks at the whole image only.

    Raises ModelNotFoundError (no detector in the manifest, or its file is missing), ModelIntegrityError
    (sha256 mismatch, unloadable graph, malformed manifest entry, anchor count unlike the graph's),
    ProviderUnavailableError; detection raises InferenceError if onnxruntime fails. One instance may be shared
    between threads.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, name: str = "blazeface", *,
                 min_score: float | None = None, nms_iou: float | None = None, device: str = "cpu",
                 providers: Sequence[prov.ProviderSpec] | None = None, threads: int | None = None,
                 batch_size: int = 32, tiles: int = 1) -> None:
        ort = prov.onnxruntime()

        from fer_runtime.predictor import default_model_dir

        self.name = name
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        manifest: Manifest = read_manifest(self.model_dir)
        if name not in manifest.detectors:
            raise ModelNotFoundError(f"no face detector {name!r} in {self.model_dir / 'manifest.json'} "
                                     f"(detectors: {', '.join(sorted(manifest.detectors)) or 'none'}); "
                                     "run python -m fer_export.detector_build, or use detector='haar'")
        self.spec: DetectorEntry = manifest.detectors[name]
        dec = self.spec.decoding
        if dec.get("name") != "blazeface":
            raise ModelIntegrityError(f"detector {name!r}: unknown decoding {dec.get('name')!r}")
        try:  # the manifest's decoding entry; a missing or malformed field is a broken model folder
            self.size = int(dec["input_size"])
            self.anchors = ssd_anchors(self.size, dec["strides"], float(dec.get("anchor_offset", 0.5)))
            self.keypoints = int(dec["keypoints"])
            self.score_clip = float(dec.get("score_clip", 80.0))
            default_score, default_iou = float(dec.get("min_score", 0.5)), float(dec.get("nms_iou", 0.3))
            self._input = str(self.spec.input["name"])
            self._outputs = [str(self.spec.outputs["boxes"]), str(self.spec.outputs["scores"])]
            declared = {k: self.spec.input[k] for k in BLAZEFACE_INPUT_FORMAT}
            shape = list(self.spec.input["shape"])[1:]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelIntegrityError(f"{self.model_dir / 'manifest.json'}: detector {name!r} has a malformed "
                                      f"entry ({type(e).__name__}: {first_line(e)})") from None
        if declared != BLAZEFACE_INPUT_FORMAT or shape != [3, self.size, self.size]:
            raise ModelIntegrityError(f"{self.model_dir / 'manifest.json'}: detector {name!r} declares input "
                                      f"{declared}, shape [N, {', '.join(map(str, shape))}]; this runtime feeds "
                                      f"{BLAZEFACE_INPUT_FORMAT}, shape [N, 3, {self.size}, {self.size}]")
        min_score = float(default_score if min_score is None else min_score)
        nms_iou = float(default_iou if nms_iou is None else nms_iou)
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.min_score, self.nms_iou, self.batch_size = min_score, nms_iou, int(batch_size)
        self.tiles = int(tiles)

        graph = read_graph(self.model_dir, manifest, self.spec.file)
        requested = prov.requested_providers(device, providers)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

        try:
            self.session = graph.session(requested, so)
        except EPFail as e:
            raise ProviderUnavailableError(f"{self.spec.file}: execution provider failed: {first_line(e)}") from None
        except prov.onnxruntime_errors() as e:  # a bug of ours (TypeError, ...) keeps its traceback
            raise ModelIntegrityError(f"{self.model_dir / self.spec.file}: onnxruntime cannot load it "
                                      f"({first_line(e)})", str(self.model_dir / self.spec.file)) from None
        prov.check_session_providers(requested, self.session, cuda_optional=providers is None and device == "auto")
        have = {o.name for o in self.session.get_outputs()} | {i.name for i in self.session.get_inputs()}
        missing = [n for n in [self._input, *self._outputs] if n not in have]
        if missing:
            raise ModelIntegrityError(f"{self.model_dir / self.spec.file}: graph lacks {', '.join(missing)}",
                                      str(self.model_dir / self.spec.file))
        n_anchors = next(o.shape[1] for o in self.session.get_outputs() if o.name == self._outputs[0])
        if isinstance(n_anchors, int) and n_anchors != len(self.anchors):
            raise ModelIntegrityError(f"{self.model_dir / self.spec.file}: the graph has {n_anchors} anchors, its "
                                      f"manifest entry's strides give {len(self.anchors)}",
                                      str(self.model_dir / self.spec.file))
        width = next(o.shape[2] for o in self.session.get_outputs() if o.name == self._outputs[0])
        if isinstance(width, int) and width != 4 + 2 * self.keypoints:
            raise ModelIntegrityError(f"{self.model_dir / self.spec.file}: the graph's boxes have {width} values, "
                                      f"its manifest entry's {self.keypoints} keypoints give {4 + 2 * self.keypoints}",
                                      str(self.model_dir / self.spec.file))
        fixed = self.session.get_inputs()[0].shape[0]
        self._fixed_batch = fixed if isinstance(fixed, int) else None

    def detect(self, image: np.ndarray) -> list[Box]:
        """The faces in one image (see the module docstring)."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """The faces in each image; all views of all images go through the graph ``batch_size`` at a time."""
        views: list[tuple[int, Region]] = []  # (image index, region of that image)
        inputs = []
        bgr = [to_bgr(im) for im in images]
        for k, im in enumerate(bgr):
            for region in tile_regions(im.shape[0], im.shape[1], self.size, self.tiles):
                x0, y0, x1, y1 = region
                lb, scale, px, py = letterbox(im[y0:y1, x0:x1], self.size)
                inputs.append(lb)
                views.append((k, (x0, y0, x1, y1, scale, px, py)))
        if not inputs:
            return []
        x = blazeface_input(np.stack(inputs)).transpose(0, 3, 1, 2)
        step = 1 if self._fixed_batch == 1 else self.batch_size
        raw_boxes, raw_scores = [], []
        for i in range(0, len(x), step):
            b, sc = prov.run_session(self.session, self.model_dir / self.spec.file, self._outputs,
                                     {self._input: np.ascontiguousarray(x[i:i + step])})
            raw_boxes.append(b)
            raw_scores.append(sc)
        boxes, scores = np.concatenate(raw_boxes), np.concatenate(raw_scores)
        found: list[list[np.ndarray]] = [[] for _ in images]
        for v, (k, view) in enumerate(views):
            found[k].append(self.decode_view(boxes[v], scores[v], view, bgr[k].shape[:2]))
        return [self.merge(np.concatenate(f) if f else np.zeros((0, 5 + 2 * self.keypoints)), bgr[k].shape[:2])
                for k, f in enumerate(found)]

    def decode_view(self, raw_boxes: np.ndarray, raw_scores: np.ndarray, view: tuple[int, ...],
                    shape: tuple[int, int]) -> np.ndarray:
        """One view's raw outputs (A, 4 + 2K) and (A, 1) to candidate rows ``[x, y, w, h, score, kx0, ky0, ...]``
        in image pixels, above ``min_score``. Boxes cut by an inner tile edge are dropped (another view holds
        the whole face)."""
        x0, y0, x1, y1, scale, pad_x, pad_y = view
        logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -self.score_clip, self.score_clip)
        score = 1.0 / (1.0 + np.exp(-logits))
        pts = raw_boxes.reshape(len(raw_boxes), -1, 2)[:, :2 + self.keypoints].astype(np.float64) / self.size
        keep = np.flatnonzero((score >= self.min_score) & (pts[:, 1, 0] > 0) & (pts[:, 1, 1] > 0))
        anchors = self.anchors[keep].astype(np.float64)
        # normalised letterbox coordinates -> pixels of the region -> pixels of the image
        pad, origin = np.array([pad_x, pad_y], np.float64), np.array([x0, y0], np.float64)
        centre = ((pts[keep, 0] + anchors) * self.size - pad) / scale + origin
        size = pts[keep, 1] * self.size / scale
        kps = ((pts[keep, 2:] + anchors[:, None, :]) * self.size - pad) / scale + origin
        rows = np.concatenate([centre - size / 2, size, score[keep, None], kps.reshape(len(keep), 2 * self.keypoints)],
                              axis=1)
        h, w = shape
        if (x0, y0, x1, y1) != (0, 0, w, h):  # a tile: drop boxes reaching over an edge inside the image
            tol = 0.02 * max(x1 - x0, y1 - y0)
            bx0, by0, bx1, by1 = rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]
            cut = (((bx0 < x0 + tol) & (x0 > 0)) | ((by0 < y0 + tol) & (y0 > 0))
                   | ((bx1 > x1 - tol) & (x1 < w)) | ((by1 > y1 - tol) & (y1 < h)))
            rows = rows[~cut]
        return rows

    def merge(self, rows: np.ndarray, shape: tuple[int, int]) -> list[Box]:
        """Candidate rows of all views of one image -> boxes after non-maximum suppression, left to right."""
        if len(rows) == 0:
            return []
        idx = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 4].tolist(), self.min_score, self.nms_iou)
        h, w = shape
        out = []
        for r in rows[np.asarray(idx, dtype=int).reshape(-1)]:
            box = Box(int(round(r[0])), int(round(r[1])), max(1, int(round(r[2]))), max(1, int(round(r[3]))),
                      score=float(r[4]),
                      keypoints=tuple((round(float(a), 1), round(float(b), 1)) for a, b in r[5:].reshape(-1, 2)))
            if box.x < w and box.y < h and box.x + box.w > 0 and box.y + box.h > 0:
                out.append(box)
        return sorted(out, key=lambda b: (b.x, b.y))


Region = tuple[int, int, int, int]


def tile_regions(height: int, width: int, size: int, levels: int = 1) -> list[Region]:
    """The views of an image the detector looks at, as (x0, y0, x1, y1): the whole image, then for each
    level a grid of square tiles of half the previous side, overlapping by half, while that side is at least
    ``size`` (the model's input). A face up to half a tile's side lies whole inside some tile."""
    regions: list[Region] = [(0, 0, width, height)]
    side = max(height, width)
    for _ in range(levels):
        side //= 2
        if side < size:
            break
        step = side // 2
        xs = sorted({*range(0, max(1, width - side), step), max(0, width - side)})
        ys = sorted({*range(0, max(1, height - side), step), max(0, height - side)})
        regions += [(x, y, min(width, x + side), min(height, y + side)) for y in ys for x in xs]
    return regions


# -- Haar -----------------------------------------------------------------------------------------

class HaarDetector:
    """OpenCV's frontal-face Haar cascade (boxes have no score and no keypoints).

    ``min_face`` is the smallest face side as a fraction of the image's shorter side (but at least the
    cascade's 24 px); large images are searched on a copy at most ``max_side`` pixels; ``scale_factor`` is the
    pyramid step (larger: faster, and more faces between two scales are missed).
    """

    name = "haar"
    _lock = threading.Lock()  # CascadeClassifier is not documented as thread-safe
    _cascade: cv2.CascadeClassifier | None = None

    def __init__(self, min_face: float = 0.04, max_side: int = HAAR_MAX_SIDE, scale_factor: float = 1.1) -> None:
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.min_face, self.max_side, self.scale_factor = float(min_face), int(max_side), float(scale_factor)

    @classmethod
    def _get_cascade(cls) -> cv2.CascadeClassifier:
        if cls._cascade is None:
            path = cv2.data.haarcascades + HAAR_CASCADE_FILE
            c = cv2.CascadeClassifier(path)
            if c.empty():
                raise ModelNotFoundError(f"cannot load the OpenCV Haar cascade {path}")
            cls._cascade = c
        return cls._cascade

    def detect(self, image: np.ndarray) -> list[Box]:
        img = to_gray_uint8(image)
        height, width = img.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = cv2.resize(img, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1.0 else img
        small = cv2.equalizeHist(small)
        side = max(24, int(min(small.shape[:2]) * self.min_face))
        if min(small.shape[:2]) < side:
            return []
        with self._lock:
            found = self._get_cascade().detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=5,
                                                         minSize=(side, side))
        boxes = [Box(int(round(x / scale)), int(round(y / scale)), int(round(w / scale)), int(round(h / scale)))
                 for (x, y, w, h) in (found if len(found) else [])]
        return sorted(boxes, key=lambda b: (b.x, b.y))

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        return [self.detect(im) for im in images]


# -- choosing an engine ---------------------------------------------------------------------------

_shared: dict[tuple[str, str], FaceDetector] = {}
_shared_lock = threading.Lock()


def get_detector(detector: str | FaceDetector = DEFAULT_DETECTOR, model_dir: str | os.PathLike[str] | None = None,
                 **options: Any) -> FaceDetector:
    """An engine by name (one of :data:`DETECTORS`), or ``detector`` itself if it already is one.

    BlazeFace is read from ``model_dir`` if its manifest lists it (a folder written by ``fer-export`` alone
    does not), else from the packaged models (``$FER_MODEL_DIR`` overrides). Without ``options`` the engine is
    built once per (name, model folder) and shared (the session and its sha256 check are paid once); with
    options a new one is built.
    """
    if not isinstance(detector, str):
        return detector
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if detector != "haar" and model_dir is not None and detector not in read_manifest(Path(model_dir)).detectors:
        model_dir = None
    if options:
        return _build(detector, model_dir, **options)
    key = (detector, str(model_dir or ""))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = _build(detector, model_dir)
        return _shared[key]


def _build(name: str, model_dir: str | os.PathLike[str] | None, **options: Any) -> FaceDetector:
    if name == "haar":
        return HaarDetector(**options)
    return BlazeFaceDetector(model_dir, name, **options)
