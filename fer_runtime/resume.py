"""Resumable CSV / JSON-lines output for long ``fer-infer`` runs (``--out FILE``, ``--resume``).

Rows are appended to ``<out>.partial``. After each chunk of complete input files the partial file is
fsynced and then a progress record ``<out>.progress.json`` (written atomically) says how many bytes
of it and how many inputs are complete. A run that is killed leaves ``<out>`` untouched (absent, or
the previous complete file); ``--resume`` truncates the partial file to the recorded length, skips
the recorded inputs and appends. When the last input is done the partial file is moved onto
``<out>`` with :func:`fer_runtime.atomic.atomic_replace` and the record is removed, so ``<out>``
only ever appears complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fer_runtime.atomic import atomic_replace, atomic_write
from fer_runtime.errors import ResumeError, first_line
from fer_runtime.results import encode_header, encode_row, has_face
from fer_runtime.typed_json import wrong_field

PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress.json"
PROGRESS_VERSION = 1


def run_settings(predictor: Any, *, faces: str, detector: Any, max_pixels: int | None) -> dict[str, Any]:
    """What an interrupted run and the run resuming it must share, besides the inputs and the output's format and
    columns: the model file, the face mode, the face detector (unless ``faces`` is ``crop``) and the pixel limit.
    Used by the CSV/JSON-lines writer here and by the Parquet output of :mod:`fer_runtime.distributed`."""
    spec = predictor.manifest.variants[predictor.variant]
    return {"faces": faces, "detector": None if faces == "crop" else str(getattr(detector, "name", detector)),
            "max_pixels": max_pixels, "model": predictor.variant,
            "model_sha256": predictor.manifest.files[spec.forward].sha256}



def settings_difference(was: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first setting (by name) in which a run resuming differs from the interrupted one, as
    "model was 'fast' in the interrupted run, now 'accurate'"; None if they agree. The CSV/JSON-lines writer
    here and the Parquet output of :mod:`fer_runtime.distributed` both check with it."""
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            return f"{key} was {was.get(key)!r} in the interrupted run, now {now.get(key)!r}"
    return None


def partial_path(out: Path) -> Path:
    """``<out>.partial``: the rows written so far."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def progress_path(out: Path) -> Path:
    """``<out>.progress.json``: how much of the partial file is complete."""
    return out.with_name(out.name + PROGRESS_SUFFIX)


def inputs_digest(inputs: Sequence[str]) -> str:
    """SHA-256 of the ordered input list (a resumed run must see exactly the same inputs)."""
    h = hashlib.sha256()
    for name in inputs:
        h.update(os.fsencode(name) + b"\0")
    return h.hexdigest()


@dataclass
class Progress:
    """The progress record: what the partial file holds, and for which run."""

    inputs_sha256: str
    n_inputs: int
    settings: dict[str, Any]
    inputs_done: int = 0
    bytes: int = 0
    rows: int = 0
    failed: int = 0
    faces: int = 0
    version: int = PROGRESS_VERSION


_COUNTS = ("n_inputs", "inputs_done", "bytes", "rows", "failed", "faces")


class ResumableWriter:
    """Write rows to ``out`` through ``<out>.partial``, committed per chunk (see the module docstring).

    ``inputs`` is the ordered list of inputs the rows come from; ``settings`` (format, columns, model,
    face mode, ...) must match for a resume. With ``resume=True`` and a progress record, the run
    continues: :attr:`inputs_done` inputs are complete and must be skipped. Use as a context manager;
    call :meth:`commit` after each chunk of complete inputs. If the block raises (or the process dies),
    ``out`` is left as it was and the partial file stays for ``--resume``.
    """

    def __init__(self, out: Path, fmt: str, cols: Sequence[str], inputs: Sequence[str], settings: dict[str, Any],
                 resume: bool = False) -> None:
        self.out, self.fmt, self.cols = Path(out), fmt, list(cols)
        self.partial, self.progress_file = partial_path(self.out), progress_path(self.out)
        self.resume = resume
        settings = {"format": fmt, "columns": self.cols, **settings}
        self.state = Progress(inputs_digest(inputs), len(inputs), json.loads(json.dumps(settings)))
        self.resumed = False
        self._fh: IO[bytes] | None = None

    @property
    def inputs_done(self) -> int:
        """Inputs whose rows are all in the committed part of the file."""
        return self.state.inputs_done

    def __enter__(self) -> "ResumableWriter":
        previous = self._load() if self.resume else None
        if previous is not None:
            self._check(previous)
            fh = open(self.partial, "r+b")
            try:
                size = os.fstat(fh.fileno()).st_size
                if size < previous.bytes:
                    raise ResumeError(f"cannot resume: {self.partial} has {size} bytes, its progress record says "
                                      f"{previous.bytes}; run without --resume to start over")
                fh.truncate(previous.bytes)  # drop rows written after the last commit
                fh.seek(previous.bytes)
            except BaseException:
                fh.close()
                raise
            self._fh, self.state, self.resumed = fh, previous, True
            return self
        self._fh = open(self.partial, "wb")
        self._fh.write(encode_header(self.fmt, self.cols).encode("utf-8"))
        self.commit(0)
        return self

    def write(self, row: dict[str, Any], failed: bool = False) -> None:
        """Append one row (not yet committed)."""
        assert self._fh is not None, "use ResumableWriter as a context manager"
        self._fh.write(encode_row(self.fmt, self.cols, row).encode("utf-8"))
        self.state.rows += 1
        self.state.failed += bool(failed)
        self.state.faces += has_face(row)

    def commit(self, inputs_done: int) -> None:
        """Make every row written so far durable and record that the first ``inputs_done`` inputs are complete."""
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.state.bytes = self._fh.tell()
        self.state.inputs_done = inputs_done
        atomic_write(self.progress_file, json.dumps(asdict(self.state), indent=1) + "\n")

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        if et is not None:
            fh.close()  # keep the partial file and its record for --resume
            return
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()
        atomic_replace(self.partial, self.out)
        self.progress_file.unlink(missing_ok=True)

    # -- internals --------------------------------------------------------------------------------
    def _load(self) -> Progress | None:
        """The interrupted run's progress record, or None if there is none (then the run starts over)."""
        if not self.progress_file.exists() or not self.partial.exists():
            return None
        try:
            raw = json.loads(self.progress_file.read_text(encoding="utf-8"))
            state = Progress(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise ResumeError(f"cannot resume: {self.progress_file} is unreadable ({first_line(e)}); "
                              "run without --resume to start over") from None
        wrong = wrong_field(Progress, raw) or next((f"{k!r} must not be negative" for k in _COUNTS
                                                   if getattr(state, k) < 0), None)
        if wrong:
            raise ResumeError(f"cannot resume: {self.progress_file} is damaged ({wrong}); "
                              "run without --resume to start over")
        if state.version != PROGRESS_VERSION:
            raise ResumeError(f"cannot resume: {self.progress_file} has version {state.version}, "
                              f"this fer-infer writes {PROGRESS_VERSION}; run without --resume to start over")
        return state

    def _check(self, previous: Progress) -> None:
        """The interrupted run must have had the same inputs in the same order, and the same settings."""
        if previous.inputs_sha256 != self.state.inputs_sha256 or previous.n_inputs != self.state.n_inputs:
            raise ResumeError(f"cannot resume {self.out}: the inputs differ from the interrupted run's "
                              f"({previous.n_inputs} then, {self.state.n_inputs} now, or in another order); "
                              "run without --resume to start over")
        difference = settings_difference(previous.settings, self.state.settings)
        if difference:
            raise ResumeError(f"cannot resume {self.out}: {difference}; run without --resume to start over")
