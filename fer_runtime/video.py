"""Video I/O through OpenCV: read frames (files or cameras) with timestamps, write annotated videos atomically."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from fer_runtime.atomic import atomic_path
from fer_runtime.errors import InvalidVideoError
from fer_runtime.images import is_image_path
from fer_runtime.results import is_utf8, printable

# FFmpeg's own log lines ("moov atom not found") would duplicate our one-line errors; read at first capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# Suffixes taken as video without probing (lower case).
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
# Codec per output suffix; all of these work in opencv-python-headless (FFmpeg backend).
FOURCC = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}

VideoSource = str | PathLike[str] | int


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: its index in the source (0-based), time in ms, and the BGR uint8 image."""

    index: int
    timestamp_ms: float
    image: np.ndarray


def is_video_file(path: str | PathLike[str]) -> bool:
    """True for a video suffix (a folder excepted), or for any other non-image file that OpenCV opens with more
    than one frame."""
    p = Path(path)
    if p.suffix.lower() in VIDEO_EXTENSIONS:
        return not p.is_dir()
    if not p.is_file() or is_image_path(p) or not is_utf8(str(p)):  # OpenCV crashes on a name it cannot encode
        return False
    cap = cv2.VideoCapture(str(p))
    try:
        return bool(cap.isOpened()) and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 1
    finally:
        cap.release()


class VideoReader:
    """Iterate over the frames of a video file or a camera (an int index), every ``every``-th frame.

    Use as a context manager. Raises :class:`InvalidVideoError` if the source cannot be opened or its
    first frame cannot be decoded. File timestamps come from the container; camera timestamps are
    milliseconds since the reader opened. A file that breaks off mid-way simply ends there.
    """

    def __init__(self, source: VideoSource, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.source, self.every = source, int(every)
        self.is_camera = isinstance(source, int)
        if not self.is_camera and not Path(source).is_file():
            raise InvalidVideoError(f"no such video file: {printable(str(source))}")
        if not self.is_camera and not is_utf8(str(source)):  # OpenCV's binding would crash the process
            raise InvalidVideoError(f"{printable(str(source))}: OpenCV cannot open a file whose name is not UTF-8; "
                                    "rename it")
        self._cap = cv2.VideoCapture(source if self.is_camera else str(source))
        if not self._cap.isOpened():
            self._cap.release()
            what = f"camera {source}" if self.is_camera else f"{source}"
            raise InvalidVideoError(f"cannot open {what} as a video (unknown format, corrupt or unavailable)")
        self._t0 = time.monotonic()

    @property
    def fps(self) -> float:
        """Frames per second reported by the source (0 if unknown)."""
        return float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    @property
    def frame_count(self) -> int | None:
        """Number of frames the container declares (None for cameras or when unknown)."""
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return None if self.is_camera or n <= 0 else n

    def __iter__(self) -> Iterator[VideoFrame]:
        index = -1
        while True:
            index += 1
            keep = index % self.every == 0
            ok = self._cap.grab()  # skipped frames are grabbed but never decoded
            if ok and keep:
                ok, image = self._cap.retrieve()
            if not ok:
                if index == 0:
                    raise InvalidVideoError(f"{self.source}: no decodable frame (corrupt or empty video)")
                return
            if keep:
                yield VideoFrame(index, self._timestamp(index), image)

    def _timestamp(self, index: int) -> float:
        if self.is_camera:
            return (time.monotonic() - self._t0) * 1000.0
        ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        if ms <= 0.0 and index > 0 and self.fps > 0:  # some containers report no position
            ms = index * 1000.0 / self.fps
        return ms

    def close(self) -> None:
        """Release the capture."""
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class VideoWriter:
    """Write BGR frames to ``path`` atomically (:func:`fer_runtime.atomic.atomic_path`): renamed into place on a clean exit.

    The codec follows the suffix (:data:`FOURCC`); the frame size is taken from the first frame and
    every later frame must match it. Use as a context manager.
    """

    def __init__(self, path: str | PathLike[str], fps: float) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise InvalidVideoError(f"cannot write {self.path}: output suffix must be one of {', '.join(sorted(FOURCC))}")
        if not self.path.parent.is_dir():
            raise InvalidVideoError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self._fourcc = cv2.VideoWriter_fourcc(*FOURCC[suffix])
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._stack = ExitStack()
        self._tmp: Path | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame."""
        if self._tmp is None:
            raise RuntimeError("use VideoWriter as a context manager (with VideoWriter(...) as w)")
        h, w = frame.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self._tmp), self._fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise InvalidVideoError(f"OpenCV cannot encode {self.path.suffix} video here")
        elif (w, h) != self._size:
            raise InvalidVideoError(f"frame size {w}x{h} differs from the video's {self._size[0]}x{self._size[1]}")
        self._writer.write(frame)
        self.frames += 1

    def __enter__(self) -> "VideoWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.release()
        if et is None and self.frames == 0:
            err = InvalidVideoError(f"no frames were written to {self.path}")
            self._stack.__exit__(InvalidVideoError, err, None)  # removes the temporary file
            raise err
        self._stack.__exit__(et, ev, tb)
