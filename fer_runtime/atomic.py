"""Atomic file output, the one rule every writer of the project uses.

A file is written to a temporary name in its destination folder, flushed and fsynced, given the
permissions a plain ``open()`` would give it (0o666 minus the umask), then renamed over the
destination with ``os.replace`` and the folder is fsynced. Readers see the old file or the new
one, never a part. If writing fails, the temporary file is removed and the destination is
untouched.

- :func:`atomic_write` for bytes or text in memory;
- :func:`atomic_open` for a stream (``with atomic_open(p, "w") as f: ...``);
- :func:`atomic_path` for libraries that write to a path themselves (Keras ``save``, matplotlib
  ``savefig``, OpenCV ``VideoWriter``): it yields a temporary path with the same suffix;
- :func:`atomic_replace` for a file built up over several runs (``fer-infer --resume``'s partial
  file): it is moved into place the same way once complete;
- :func:`atomic_dir` for a folder whose files must change together (``models/``: the manifest and
  the ONNX files it hashes): a staged copy is exchanged with the folder in one step.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "atomic_open", "atomic_path", "atomic_replace", "atomic_dir", "file_mode"]


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
        atomic_replace(tmp, path)
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


def atomic_replace(src: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the finished file ``src`` (in the same folder) to ``path``: fsync, permissions, rename, fsync the folder."""
    src, path = Path(src), Path(path)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _commit(src, path)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):  # this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _refuse_working_folder(path: Path) -> None:
    """OSError (EBUSY) if the resolved ``path`` is the working folder or holds it: replacing it would copy all it
    holds (a whole checkout for ``--out .``) and leave the shell in a deleted folder."""
    try:
        here, st = Path.cwd(), path.stat()
    except OSError:  # the working folder is gone, or ``path`` does not exist yet and so holds nothing
        return
    for p in (here, *here.parents):  # compared as files, not names (bind mounts, case-insensitive names)
        try:
            same = os.path.samestat(st, p.stat())
        except OSError:
            continue
        if same:
            raise OSError(errno.EBUSY, "it is the working folder or holds it; run the command from outside it",
                          str(path))


def check_stageable(path: str | os.PathLike[str]) -> None:
    """Raise OSError now if :func:`atomic_dir` could not stage ``path``: it is the working folder or holds it, or its
    nearest existing ancestor is not a folder this process can create entries in. For long jobs that write their
    folder at the end."""
    _refuse_working_folder(Path(path).resolve())
    parent = Path(path).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(parent))
    try:
        probe = tempfile.mkdtemp(dir=parent, prefix=f".{Path(path).name}.probe-")
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(parent)) from None  # name the folder, not the probe
    shutil.rmtree(probe)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staged copy of the folder ``path`` (a new empty one if it does not exist); on success the stage
    replaces ``path`` in one step, so readers see the old folder or the new one, never a mix.

    Write files into the stage as new files (``atomic_write``, ``shutil.copy``); the copies of the old files
    are real copies, so nothing written there can reach the old folder. On Linux the two folders are exchanged
    with ``renameat2(RENAME_EXCHANGE)``; elsewhere (or on a filesystem without it) the old folder is renamed
    away and the stage renamed in, with a moment in between in which ``path`` does not exist. If the block
    raises, ``path`` is untouched and the stage is removed. OSError (EBUSY) before anything is written if ``path``
    is the working folder or holds it.
    """
    path = Path(path).resolve()  # a symlink's target is replaced, not the link
    _refuse_working_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.stage-"))
    try:
        if path.is_dir():
            shutil.copytree(path, stage, symlinks=True, dirs_exist_ok=True)
            os.chmod(stage, path.stat().st_mode & 0o7777)
        else:
            os.chmod(stage, 0o777 & ~_umask())
        yield stage
        _fsync_tree(stage)
        if not path.exists():
            os.rename(stage, path)
        elif not _exchange(stage, path):
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.rename(path, old / path.name)
            os.rename(stage, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the stage, or after an exchange the old folder


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            p = Path(root) / name
            if p.is_symlink():
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
