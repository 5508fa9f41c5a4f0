"""Files to result rows: decode, find faces, batch them through a Predictor, optionally draw saliency figures;
videos to one row per face per processed frame."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fer_runtime.choices import FACE_MODES
from fer_runtime.errors import InvalidImageError, first_line
from fer_runtime.detectors import DEFAULT_DETECTOR, FaceDetector, get_detector
from fer_runtime.faces import face_regions
from fer_runtime.frames import FrameAnalyzer
from fer_runtime.images import DEFAULT_MAX_PIXELS, face_pixels, read_image, resize, write_image
from fer_runtime.overlay import PANEL, saliency_figure
from fer_runtime.predictor import Predictor
from fer_runtime.inputs import common_root
from fer_runtime.results import SALIENCY_COLUMN, has_face, prob_column
from fer_runtime.video import VideoFrame, VideoReader

NO_FACE = "no face detected"
NO_SUCH_FILE = "no such file or directory"  # the error of an input path that does not exist
NONE = "none"  # the source of an `auto` row for an image in which no face was found (no label, not an error)


@dataclass
class Row:
    """One output row (``fields`` keyed by column name)."""

    fields: dict[str, Any]

    @property
    def failed(self) -> bool:
        """Whether the row records a failed file: it has an error other than "no face detected" (the one rule for
        rows made here and rows read back from a Ray dataset or a Parquet file)."""
        return self.fields.get("error") not in (None, NO_FACE)

    @property
    def has_face(self) -> bool:
        """Whether the row holds a face (see :func:`fer_runtime.results.has_face`)."""
        return has_face(self.fields)


@dataclass(eq=False)
class _Face:
    row: Row
    face48: np.ndarray  # uint8 48x48 gray: read by the Predictor exactly as the library reads it
    display: np.ndarray | None = None  # face crop at figure size, only with a saliency dir
    figure: Path | None = None


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)  # every row in output order, done or not
    faces: list[_Face] = field(default_factory=list)  # rows still waiting for a prediction


def error_row(path: str, message: str) -> Row:
    """A row without a prediction (a failed file, unless ``message`` is :data:`NO_FACE`)."""
    return Row({"path": path, "error": message})


def _one_line(e: BaseException) -> str:
    """An expected error as one line for the error column (the class name if it has no message)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror  # the row names the file already
    return first_line(e)


class _FigureNames:
    """The saliency figure of face ``k`` of an input: ``<folders>/<stem>_face<k>.png`` in the saliency folder,
    where ``<folders>`` are the input's folders below the inputs' common folder, so inputs with the same name in
    different folders get different figures. Inputs that would share a name (``a.png`` and ``a.jpg``) get
    ``<stem>_<n>`` in input order. Names are fixed from the whole input list up front, so a resumed run that
    reads only the rest of it names each figure as the first run did."""

    def __init__(self, folder: Path, inputs: Sequence[str]) -> None:
        self.folder = folder
        self.bases: dict[str, Path] = {}  # input -> figure name without _face<k>.png
        root = common_root(inputs)
        used: set[Path] = set()
        for item in inputs:
            if item in self.bases:  # the same input twice: the same figures
                continue
            rel = Path(Path(item).name)
            if root is not None:
                try:
                    rel = Path(os.path.abspath(item)).relative_to(root)
                except ValueError:  # a name that is no path below the root (a URI)
                    pass
            base, n = rel.parent / rel.stem, 1
            while base in used:
                base, n = rel.parent / f"{rel.stem}_{n}", n + 1
            used.add(base)
            self.bases[item] = base

    def __call__(self, item: str, k: int) -> Path:
        base = self.bases[item]
        return self.folder / base.parent / f"{base.name}_face{k}.png"


@dataclass(frozen=True)
class Source:
    """An image that is not a local file (bytes, an array, a remote object): ``name`` goes in the path column and
    ``load()`` returns the decoded image or raises :class:`InvalidImageError` as :func:`read_image` does.
    :func:`infer_files` takes these wherever it takes a path (:mod:`fer_runtime.distributed` uses them)."""

    name: str
    load: Callable[[], np.ndarray]


def infer_files(predictor: Predictor, files: Iterable[Path | Source], faces: str = "auto",
                margin: float | None = None, saliency_dir: Path | None = None,
                on_file: Callable[[Path | Source], None] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                quiet: bool = True, *, detector: str | FaceDetector = DEFAULT_DETECTOR,
                saliency_inputs: Sequence[Path | Source] | None = None) -> Iterator[Row]:
    """Yield result rows for ``files`` in order: one per face, or one error row per unreadable file.

    ``faces``: ``crop`` (the whole image is the face), ``detect`` (only detected faces; an image without one
    gets a row with error "no face detected" that does not count as failed) or ``auto``: an image whose longer
    side is at most 128 px is taken to be a face crop and classified whole (source ``whole``); in a larger one
    the detected faces are classified, and if there is none the file gets one row with source ``none``, no
    label, no probabilities and no error. ``detector`` (an engine name or object, :mod:`fer_runtime.detectors`)
    finds the faces; ``margin`` replaces its crop rule (:func:`fer_runtime.faces.detect_faces`).
    Faces are predicted ``predictor.batch_size`` at a time. With ``saliency_dir`` a figure is
    written per face, named after the file's path below the folder holding all of ``saliency_inputs`` (default:
    ``files``; pass the whole input list when ``files`` is the rest of it, as a resumed run does), and the row's
    ``saliency_png`` column holds its path. ``on_file`` is called with each file (or Source) after it is read. Files whose header declares more than
    ``max_pixels`` pixels get an error row without being decoded; ``quiet`` keeps the codecs' messages off
    stderr (:func:`fer_runtime.images.read_image`).
    """
    for rows, _ in infer_chunks(predictor, files, faces, margin, saliency_dir, on_file, max_pixels, quiet,
                                detector=detector, saliency_inputs=saliency_inputs):
        yield from rows


def infer_chunks(predictor: Predictor, files: Iterable[Path | Source], faces: str = "auto",
                 margin: float | None = None, saliency_dir: Path | None = None,
                 on_file: Callable[[Path | Source], None] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 quiet: bool = True, *, detector: str | FaceDetector = DEFAULT_DETECTOR,
                 saliency_inputs: Sequence[Path | Source] | None = None) -> Iterator[tuple[list[Row], int]]:
    """:func:`infer_files` in chunks: ``(rows, files_done)`` after each batch.

    All rows of a file are in one chunk, so ``files_done`` (counted from the start of ``files``) is the
    number of files whose rows have all been yielded: the point a resumed run continues from.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    names = None
    if saliency_dir is not None:
        if saliency_inputs is None:
            files = saliency_inputs = list(files)
        names = _FigureNames(saliency_dir, [_key(f) for f in saliency_inputs])
    labels = predictor.labels
    # the engine is loaded (and its file verified) before the first file is read
    engine = get_detector(detector, predictor.model_dir) if faces != "crop" else None
    batch = _Batch()
    done = 0
    for item in files:
        _read_faces(item, faces, margin, names, batch, max_pixels, quiet, engine)
        done += 1
        if on_file is not None:
            on_file(item)
        if len(batch.faces) >= predictor.batch_size or len(batch.rows) >= predictor.batch_size:
            yield list(_flush(predictor, labels, batch)), done
    yield list(_flush(predictor, labels, batch)), done


def _key(item: Path | Source) -> str:
    """An input's path column: a Source's name or the path as given."""
    return item.name if isinstance(item, Source) else str(item)


def _read_faces(item: Path | Source, mode: str, margin: float | None, names: _FigureNames | None, batch: _Batch,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, quiet: bool = True,
                detector: FaceDetector | None = None) -> None:
    """Decode one file (or :class:`Source`) and queue its faces (or an error row)."""
    p = _key(item)
    try:
        image = item.load() if isinstance(item, Source) else read_image(item, max_pixels=max_pixels, quiet=quiet)
    except (InvalidImageError, OSError, cv2.error) as e:  # read_image types its own; the others in case
        batch.rows.append(error_row(p, _one_line(e)))
        return
    try:
        boxes = face_regions(image, mode, detector or DEFAULT_DETECTOR, margin=margin)
        if not boxes:
            batch.rows.append(Row({"path": p, "source": NONE, "error": None}) if mode == "auto"
                              else error_row(p, NO_FACE))
            return
        queued = []
        for k, (box, source) in enumerate(boxes):
            crop = box.crop(image)
            row = Row({"path": p, "face": k, "x": box.x, "y": box.y, "w": box.w, "h": box.h, "source": source,
                       "score": box.score})
            face = _Face(row, face_pixels(crop))
            if names is not None:  # keep only a figure-sized copy, never the full-size crop
                s = min(1.0, PANEL / max(crop.shape[:2]))
                face.display = resize(crop, max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))).copy()
                face.figure = names(p, k)
            queued.append(face)
    except InvalidImageError as e:  # a decodable file whose content we cannot use; anything else is a bug
        batch.rows.append(error_row(p, _one_line(e)))
        return
    for face in queued:
        batch.rows.append(face.row)
        batch.faces.append(face)


def _flush(predictor: Predictor, labels: list[str], batch: _Batch) -> Iterator[Row]:
    """Predict the queued faces, draw their figures, and yield every queued row in order."""
    if batch.faces:
        probs = predictor.predict(np.stack([f.face48 for f in batch.faces]))
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
                    f.figure.parent.mkdir(parents=True, exist_ok=True)
                    write_image(f.figure, saliency_figure(f.display, m, caption))
                    f.row.fields[SALIENCY_COLUMN] = str(f.figure)
                except (OSError, InvalidImageError) as e:
                    f.row.fields["error"] = f"saliency figure not written: {_one_line(e)}"
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
