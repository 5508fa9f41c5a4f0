"""Result rows: the column layout, and an atomic CSV / JSON-lines writer."""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fer_runtime.atomic import atomic_open
from fer_runtime.choices import FORMATS, JSONL_SUFFIXES

# score: the face detector's confidence in [0, 1] (empty for Haar boxes and whole-image rows)
BASE_COLUMNS = ("path", "face", "x", "y", "w", "h", "source", "score", "label", "confidence")
VIDEO_COLUMNS = ("frame", "timestamp_ms", "track")  # put in front of the image columns for video input
# the face's saliency figure (``fer-infer --saliency-dir``), as written; empty without one (and not in video rows)
SALIENCY_COLUMN = "saliency_png"


INT_COLUMNS = ("face", "x", "y", "w", "h", "frame", "track")
TEXT_COLUMNS = ("path", "source", "label", SALIENCY_COLUMN, "error")
FLOAT64_COLUMNS = ("score", "timestamp_ms")  # computed in float64 (the detector's sigmoid, the container's clock)


def column_kind(column: str) -> str:
    """``"int"``, ``"text"``, ``"float64"`` (score, timestamp_ms) or ``"float32"`` (confidence, p_<label>, as the
    model computes them): how a typed output (the Parquet dataset) stores the column."""
    if column in INT_COLUMNS:
        return "int"
    return "text" if column in TEXT_COLUMNS else "float64" if column in FLOAT64_COLUMNS else "float32"


def prob_column(label: str) -> str:
    """``"Angry"`` -> ``"p_angry"`` (non-alphanumerics become ``_``)."""
    return "p_" + re.sub(r"\W+", "_", label.strip().lower()).strip("_")


def columns(labels: Sequence[str]) -> list[str]:
    """``path, face, x, y, w, h, source, score, label, confidence, p_<label>..., saliency_png, error``."""
    return [*BASE_COLUMNS, *(prob_column(l) for l in labels), SALIENCY_COLUMN, "error"]


def video_columns(labels: Sequence[str]) -> list[str]:
    """``frame, timestamp_ms, track``, then :func:`columns` without ``saliency_png`` (video has no figures)."""
    return [*VIDEO_COLUMNS, *(c for c in columns(labels) if c != SALIENCY_COLUMN)]


def format_for(out: Path | None, fmt: str | None) -> str:
    """The explicit format, else ``jsonl`` for ``.jsonl``/``.ndjson``/``.json`` outputs, else ``csv``."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if out is not None and out.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    return "csv"


class RowWriter:
    """Write rows to ``out`` atomically (:func:`fer_runtime.atomic.atomic_open`) or, for ``out=None``, to stdout.

    Use as a context manager; if the block raises, ``out`` is left as it was.
    """

    def __init__(self, out: Path | None, fmt: str, cols: Sequence[str]) -> None:
        self.out, self.fmt, self.cols = out, fmt, list(cols)
        self._stack = ExitStack()
        self._fh: IO[str] | None = None

    def __enter__(self) -> "RowWriter":
        if self.out is None:
            self._fh = sys.stdout
        else:
            self._fh = self._stack.enter_context(atomic_open(self.out, "w", encoding="utf-8", newline=""))
        self._fh.write(encode_header(self.fmt, self.cols))
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Write one row (keys are column names; missing ones are empty)."""
        assert self._fh is not None, "use RowWriter as a context manager"
        self._fh.write(encode_row(self.fmt, self.cols, row))

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.out is None:
            if et is None and self._fh is not None:
                self._fh.flush()  # a closed pipe shows here, inside the caller's error handling
            return
        self._stack.__exit__(et, ev, tb)


def encode_header(fmt: str, cols: Sequence[str]) -> str:
    """The text a file of ``fmt`` starts with: the CSV header line, nothing for JSON lines."""
    return _csv_line(cols) if fmt == "csv" else ""


def encode_row(fmt: str, cols: Sequence[str], row: dict[str, Any]) -> str:
    """One row as the text of one CSV record or one JSON line (keys are column names; missing ones are empty)."""
    if fmt == "csv":
        return _csv_line([_csv_cell(row.get(k)) for k in cols])
    return json.dumps({k: _json_cell(row.get(k)) for k in cols}, ensure_ascii=False) + "\n"


def _csv_line(cells: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return printable(v) if isinstance(v, str) else v


def _json_cell(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else printable(v) if isinstance(v, str) else v


def has_face(fields: Mapping[str, Any]) -> bool:
    """Whether a result row holds a face: it has a label (a failed file, or an image with no face, has none). The
    one rule for every count of faces."""
    return fields.get("label") is not None


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: False for a file name whose bytes are not UTF-8, which Python keeps as
    surrogates, and which OpenCV and Arrow cannot take."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(text: str) -> str:
    """``text`` as UTF-8 can hold it: a file name's bytes that are not UTF-8 (which Python keeps as surrogates)
    become ``\\xNN`` escapes, as ``ls -b`` shows them; other text is returned as it is."""
    if is_utf8(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
