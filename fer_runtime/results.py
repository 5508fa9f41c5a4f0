"""Result rows: the column layout, and an atomic CSV / JSON-lines writer."""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

FORMATS = ("csv", "jsonl")
BASE_COLUMNS = ("path", "face", "x", "y", "w", "h", "source", "label", "confidence")
VIDEO_COLUMNS = ("frame", "timestamp_ms", "track")  # put in front of the image columns for video input


def prob_column(label: str) -> str:
    """``"Angry"`` -> ``"p_angry"`` (non-alphanumerics become ``_``)."""
    return "p_" + re.sub(r"\W+", "_", label.strip().lower()).strip("_")


def columns(labels: Sequence[str]) -> list[str]:
    """``path, face, x, y, w, h, source, label, confidence, p_<label>..., error``."""
    return [*BASE_COLUMNS, *(prob_column(l) for l in labels), "error"]


def video_columns(labels: Sequence[str]) -> list[str]:
    """``frame, timestamp_ms, track``, then :func:`columns`."""
    return [*VIDEO_COLUMNS, *columns(labels)]


def format_for(out: Path | None, fmt: str | None) -> str:
    """The explicit format, else ``jsonl`` for ``.jsonl``/``.ndjson``/``.json`` outputs, else ``csv``."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if out is not None and out.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "csv"


class RowWriter:
    """Write rows to ``out`` (atomically: a temp file in the same folder, then ``os.replace``) or to stdout.

    Use as a context manager; if the block raises, the temp file is removed and ``out`` is untouched.
    """

    def __init__(self, out: Path | None, fmt: str, cols: Sequence[str]) -> None:
        self.out, self.fmt, self.cols = out, fmt, list(cols)
        self._tmp: str | None = None
        self._fh: IO[str] | None = None
        self._csv: Any = None

    def __enter__(self) -> "RowWriter":
        if self.out is None:
            self._fh = sys.stdout
        else:
            fd, self._tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
            self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.fmt == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=self.cols, extrasaction="ignore", lineterminator="\n")
            self._csv.writeheader()
        return self

    def write(self, row: dict[str, Any]) -> None:
        assert self._fh is not None, "use RowWriter as a context manager"
        if self.fmt == "csv":
            self._csv.writerow({k: _csv_cell(row.get(k)) for k in self.cols})
        else:
            self._fh.write(json.dumps({k: _json_cell(row.get(k)) for k in self.cols}, ensure_ascii=False) + "\n")

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._tmp is None:
            if self._fh is not None:
                self._fh.flush()
            return
        try:
            assert self._fh is not None
            if et is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if et is None:
                os.chmod(self._tmp, 0o666 & ~_umask())
                os.replace(self._tmp, self.out)  # type: ignore[arg-type]
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return v


def _json_cell(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v
