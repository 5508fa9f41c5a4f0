"""Files to result rows: decode, find faces, batch them through a Predictor, optionally draw saliency figures;
videos to one row per face per processed frame."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime.errors import InvalidImageError
from fer_runtime.faces import Box, detect_faces
from fer_runtime.frames import FrameAnalyzer
from fer_runtime.images import preprocess, read_image, resize, write_image
from fer_runtime.overlay import PANEL, saliency_figure
from fer_runtime.predictor import Predictor
from fer_runtime.results import prob_column
from fer_runtime.video import VideoFrame, VideoReader

FACE_MODES = ("auto", "detect", "crop")
NO_FACE = "no face detected"


@dataclass
class Row:
    """One output row (``fields`` keyed by column name) and whether it records a failed file."""

    fields: dict[str, Any]
    failed: bool = False


@dataclass(eq=False)
class _Face:
    row: Row
    face48: np.ndarray
    display: np.ndarray | None = None  # face crop at figure size, only with a saliency dir
    figure: Path | None = None


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)  # every row in output order, done or not
    faces: list[_Face] = field(default_factory=list)  # rows still waiting for a prediction


def error_row(path: str, message: str, failed: bool = True) -> Row:
    """A row without a prediction; ``failed`` marks a file that could not be processed."""
    return Row({"path": path, "error": message}, failed=failed)


def _face_boxes(image: np.ndarray, mode: str, margin: float) -> list[tuple[Box, str]]:
    h, w = image.shape[:2]
    whole = [(Box(0, 0, w, h), "whole")]
    if mode == "crop":
        return whole
    found = [(b, "detected") for b in detect_faces(image, margin=margin)]
    return found or (whole if mode == "auto" else [])


class _FigureNames:
    """``<stem>_face<k>.png`` in the saliency folder, made unique within one run."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.used = folder, set()

    def __call__(self, path: Path, k: int) -> Path:
        name, n = f"{path.stem}_face{k}.png", 1
        while name in self.used:
            name, n = f"{path.stem}_{n}_face{k}.png", n + 1
        self.used.add(name)
        return self.folder / name


def infer_files(predictor: Predictor, files: Iterable[Path], faces: str = "auto", margin: float = 0.15,
                saliency_dir: Path | None = None, on_file: Callable[[Path], None] | None = None) -> Iterator[Row]:
    """Yield result rows for ``files`` in order: one per face, or one error row per unreadable file.

    ``faces``: ``crop`` (the whole image is the face), ``detect`` (only detected faces; an image without one
    gets a row with error "no face detected" that does not count as failed) or ``auto`` (detect, fall back to
    the whole image). Faces are predicted ``predictor.batch_size`` at a time. With ``saliency_dir`` a figure is
    written per face. ``on_file`` is called after each file is read.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    names = _FigureNames(saliency_dir) if saliency_dir is not None else None
    labels = predictor.labels
    batch = _Batch()
    for path in files:
        _read_faces(path, faces, margin, names, batch)
        if on_file is not None:
            on_file(path)
        if len(batch.faces) >= predictor.batch_size:
            yield from _flush(predictor, labels, batch)
    yield from _flush(predictor, labels, batch)


def _read_faces(path: Path, mode: str, margin: float, names: _FigureNames | None, batch: _Batch) -> None:
    """Decode one file and queue its faces (or an error row)."""
    p = str(path)
    try:
        image = read_image(path)
        boxes = _face_boxes(image, mode, margin)
        if not boxes:
            batch.rows.append(error_row(p, NO_FACE, failed=False))
            return
        queued = []
        for k, (box, source) in enumerate(boxes):
            crop = box.crop(image)
            row = Row({"path": p, "face": k, "x": box.x, "y": box.y, "w": box.w, "h": box.h, "source": source})
            face = _Face(row, preprocess(crop))
            if names is not None:  # keep only a figure-sized copy, never the full-size crop
                s = min(1.0, PANEL / max(crop.shape[:2]))
                face.display = resize(crop, max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))).copy()
                face.figure = names(path, k)
            queued.append(face)
    except InvalidImageError as e:
        batch.rows.append(error_row(p, str(e)))
        return
    except Exception as e:  # never let one bad file end the run (cv2.error, MemoryError, ...)
        batch.rows.append(error_row(p, f"{e.__class__.__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"))
        return
    for face in queued:
        batch.rows.append(face.row)
        batch.faces.append(face)


def _flush(predictor: Predictor, labels: list[str], batch: _Batch) -> Iterator[Row]:
    """Predict the queued faces, draw their figures, and yield every queued row in order."""
    if batch.faces:
        probs = predictor.predict([f.face48 for f in batch.faces])
        best = probs.argmax(axis=1)
        for f, p, b in zip(batch.faces, probs, best):
            f.row.fields.update({"label": labels[b], "confidence": float(p[b]), "error": None})
            f.row.fields.update({prob_column(l): float(v) for l, v in zip(labels, p)})
        with_fig = [(f, int(b)) for f, b in zip(batch.faces, best) if f.figure is not None]
        if with_fig:
            maps = predictor.saliency([f.face48 for f, _ in with_fig], classes=[b for _, b in with_fig])
            for (f, b), m in zip(with_fig, maps):
                assert f.display is not None and f.figure is not None
                caption = f"{labels[b]} {f.row.fields['confidence']:.0%}  ({f.row.fields['source']})"
                try:
                    write_image(f.figure, saliency_figure(f.display, m, caption))
                except Exception as e:
                    f.row.fields["error"] = f"saliency figure not written: {e}"
                    f.row.failed = True
    rows, batch.rows, batch.faces = batch.rows, [], []
    yield from rows


def infer_video(analyzer: FrameAnalyzer, path: Path, every: int = 1,
                on_frame: Callable[[VideoFrame], None] | None = None) -> Iterator[Row]:
    """Yield one row per face per processed frame of the video ``path`` (every ``every``-th frame).

    Rows follow :func:`fer_runtime.results.video_columns`. Raises :class:`InvalidVideoError` if the video
    cannot be opened or decoded. ``on_frame`` is called after each processed frame.
    """
    analyzer.reset()
    labels = analyzer.labels
    with VideoReader(path, every=every) as reader:
        for frame in reader:
            results = analyzer.process(frame.image, timestamp=frame.timestamp_ms)
            for k, r in enumerate(results):
                yield Row({**r.to_row(labels, path=str(path), face=k), "frame": frame.index})  # source index
            if on_frame is not None:
                on_frame(frame)
