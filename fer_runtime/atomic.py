"""Atomic file output, the one rule every writer of the project uses.

A file is written to a temporary name in its destination folder, flushed and fsynced, given the
permissions a plain ``open()`` would give it (0o666 minus the umask), then renamed over the
destination with ``os.replace`` and the folder is fsynced. Readers see the old file or the new
one, never a part. If writing fails, the temporary file is removed and the destination is
untouched.

- :func:`atomic_write` for bytes or text in memory;
- :func:`atomic_open` for a stream (``with atomic_open(p, "w") as f: ...``);
- :func:`atomic_path` for libraries that write to a path themselves (Keras ``save``, matplotlib
  ``savefig``, OpenCV ``VideoWriter``): it yields a temporary path with the same suffix.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "atomic_open", "atomic_path", "file_mode"]


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` set-and-restore is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def file_mode() -> int:
    """The mode a new file gets from a plain ``open()``: 0o666 minus the umask."""
    return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform or filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _temp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``.

    The caller (a library) writes the file; it is then fsynced and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``"w"`` or ``"wb"``); it replaces ``path`` on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files only: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_open(path, "wb") as f:
        f.write(raw)
