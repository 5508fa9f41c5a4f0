"""Per-frame analysis for video and cameras: detect (every k-th frame), track, predict one batch, smooth."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_runtime.detectors import DEFAULT_DETECTOR, FaceDetector, HaarDetector, get_detector
from fer_runtime.errors import InvalidImageError
from fer_runtime.faces import Box, detect_faces
from fer_runtime.images import to_uint8
from fer_runtime.predictor import Predictor
from fer_runtime.results import prob_column
from fer_runtime.tracking import IouTracker, ema

Detector = Callable[[np.ndarray], list[Box]]
VIDEO_DETECT_MAX_SIDE = 320  # Haar searches video frames at this size: ~4x faster than full 640x480, same boxes
# BlazeFace looks at whole video frames only: webcam faces are near the camera, and the tiles that find small
# faces in photos cost about 5x the time (README, "Face detection and crops")
VIDEO_TILES = 0


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame.

    ``probs`` is this frame's prediction, ``smoothed`` the EMA over the track; ``label`` and ``confidence``
    are taken from ``smoothed``. ``detected`` is False when the box was carried over from the last detection.
    """

    track: int
    box: Box
    probs: np.ndarray
    smoothed: np.ndarray
    label: str
    confidence: float
    detected: bool
    frame: int
    timestamp_ms: float | None

    @property
    def raw_index(self) -> int:
        """Class index of the unsmoothed prediction."""
        return int(np.argmax(self.probs))

    def to_row(self, labels: list[str], path: str = "", face: int = 0) -> dict[str, Any]:
        """An output row (see :func:`fer_runtime.results.video_columns`) with the raw label and probabilities.

        ``face`` is the face's position within its frame; ``source`` is ``detected`` or ``tracked``; ``score``
        is the detection score of the box (for a tracked box, that of the detection it was carried over from).
        """
        k = self.raw_index
        row: dict[str, Any] = {"frame": self.frame, "timestamp_ms": self.timestamp_ms, "track": self.track,
                               "path": path, "face": face, "x": self.box.x, "y": self.box.y, "w": self.box.w,
                               "h": self.box.h, "source": "detected" if self.detected else "tracked",
                               "score": self.box.score, "label": labels[k], "confidence": float(self.probs[k]),
                               "error": None}
        row.update({prob_column(l): float(v) for l, v in zip(labels, self.probs)})
        return row


def check_frame(frame: Any) -> np.ndarray:
    """Validate a video frame and return it as uint8 (HxW gray, HxWx3 BGR or HxWx4 BGRA).

    Gray and 1-channel frames are accepted; 16-bit and float frames are converted (see
    :func:`fer_runtime.images.to_uint8`). Raises :class:`InvalidImageError` for anything else.
    """
    if not isinstance(frame, np.ndarray):
        raise InvalidImageError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise InvalidImageError(f"frame must be HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA), got shape {frame.shape}")
    if frame.size == 0:
        raise InvalidImageError(f"empty frame of shape {frame.shape}")
    return to_uint8(frame)


class FrameAnalyzer:
    """Facial expressions of the faces in a stream of frames, with stable track ids and smoothed probabilities.

    Args:
        predictor: the :class:`Predictor` to run; all faces of a frame go through it as one batch.
        detect_every: run the face detector on every k-th processed frame; in between, the faces of the
            last detection are re-classified in their last boxes.
        smoothing: EMA weight of the past, in [0, 1): 0 = no smoothing, 0.7 = a new frame counts 30%.
        iou_threshold, max_missed: tracker settings (see :class:`fer_runtime.tracking.IouTracker`).
        detector: an engine name (``"blazeface"``, the default, or ``"haar"``), an engine object
            (:mod:`fer_runtime.detectors`), or any callable ``frame -> list[Box]`` (its boxes are used as they
            are). Engines' boxes are cropped as :func:`fer_runtime.faces.detect_faces` does; BlazeFace comes from
            the predictor's model folder if its manifest lists one, else from the packaged models, and by name
            it looks at the whole frame only (``BlazeFaceDetector()`` adds the tiles that find small faces).
        margin: replaces the engine's crop rule by this margin (see :func:`fer_runtime.faces.detect_faces`).
        scale_factor: the Haar cascade's pyramid step (``detector="haar"``, which searches a copy at most 320 px
            wide); 1.2 instead of 1.1 makes it about 2.5x faster but misses more faces.

    All frames must have the same size; call :meth:`reset` before switching to another source.
    """

    def __init__(self, predictor: Predictor, detect_every: int = 1, smoothing: float = 0.7, *,
                 iou_threshold: float = 0.3, max_missed: int = 2,
                 detector: str | FaceDetector | Detector | None = None, margin: float | None = None,
                 scale_factor: float = 1.1) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.predictor = predictor
        self.detect_every, self.smoothing = int(detect_every), float(smoothing)
        if detector is None:
            detector = DEFAULT_DETECTOR
        if detector == "haar":
            detector = HaarDetector(max_side=VIDEO_DETECT_MAX_SIDE, scale_factor=scale_factor)
        elif isinstance(detector, str):
            detector = get_detector(detector, predictor.model_dir, tiles=VIDEO_TILES)
        if hasattr(detector, "detect_batch"):  # an engine: crop its boxes the runtime's way
            engine: FaceDetector = detector  # type: ignore[assignment]
            self.detector: Detector = lambda im: detect_faces(im, engine, margin=margin)
        elif callable(detector):
            self.detector = detector
        else:
            raise ValueError(f"detector must be an engine name, an engine or a callable, got {detector!r}")
        self.tracker = IouTracker(iou_threshold, max_missed)
        self.labels = predictor.labels
        self._count = 0
        self._shape: tuple[int, int] | None = None

    @property
    def frames_processed(self) -> int:
        """Frames processed since construction or the last :meth:`reset`."""
        return self._count

    def reset(self) -> None:
        """Forget tracks, smoothing state and frame size (e.g. before another video)."""
        self.tracker.reset()
        self._count, self._shape = 0, None

    def process(self, frame_bgr: np.ndarray, timestamp: float | None = None) -> list[FaceResult]:
        """Analyze one frame; ``timestamp`` (ms) is only passed through to the results.

        Returns one :class:`FaceResult` per visible face, ordered by track id.
        Raises :class:`InvalidImageError` for an invalid frame or one whose size differs from earlier frames.
        """
        frame = check_frame(frame_bgr)
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        if self._shape is not None and shape != self._shape:
            raise InvalidImageError(f"frame size changed from {self._shape[1]}x{self._shape[0]} to "
                                    f"{shape[1]}x{shape[0]}; call reset() before a new source")
        self._shape = shape
        detect = self._count % self.detect_every == 0
        index = self._count
        self._count += 1
        tracks = self.tracker.update(self.detector(frame)) if detect else self.tracker.visible()
        tracks = sorted(tracks, key=lambda t: t.id)
        if not tracks:
            return []
        probs = self.predictor.predict([t.box.crop(frame) for t in tracks])
        out = []
        for t, p in zip(tracks, probs):
            t.smoothed = ema(t.smoothed, p, self.smoothing)
            k = int(np.argmax(t.smoothed))
            out.append(FaceResult(t.id, t.box, p, t.smoothed, self.labels[k], float(t.smoothed[k]), detect,
                                  index, timestamp))
        return out
