"""Expand command-line inputs (files, folders, globs) to a sorted, de-duplicated list of files."""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from fer_runtime.images import is_image_path


def is_hidden(name: str) -> bool:
    """A dot-file or dot-folder name (``.hidden.png``, ``.thumbnails``); ``.`` and ``..`` are not hidden."""
    return name.startswith(".") and name not in (".", "..")


def _images_under(folder: Path) -> list[Path]:
    """Every entry under ``folder`` named like an image, whatever it is: a dangling symbolic link, a link loop,
    a FIFO or a folder called ``x.png`` is listed too, so that it gets an error row instead of vanishing.
    Hidden entries are skipped: dot-files, and everything in a dot-folder (which is not searched).
    Symbolic links to folders are not followed (no loops). A folder that cannot be listed is listed itself, for
    its error row (``permission denied``)."""
    return _entries_under(folder, is_image_path, keep_unlisted=True)


def videos_in(args: Iterable[str]) -> list[Path]:
    """The video files (by suffix) in the folders among ``args``, hidden ones skipped: ``fer-infer`` takes a video
    only when it is named directly, so a folder holding only videos gets an error that says so."""
    from fer_runtime.video import VIDEO_EXTENSIONS

    return [f for a in args if Path(a).is_dir()
            for f in _entries_under(Path(a), lambda n: Path(n).suffix.lower() in VIDEO_EXTENSIONS)]


def _entries_under(folder: Path, match: Callable[[str], bool], keep_unlisted: bool = False) -> list[Path]:
    """Every entry under ``folder`` whose name ``match``es, files and folders alike, sorted; dot-names are skipped
    and dot-folders not searched; symbolic links to folders are listed but not followed. ``keep_unlisted``: a
    folder that cannot be listed is an entry too, whatever its name (otherwise it is passed over)."""
    found: list[Path] = []

    def unlisted(e: OSError) -> None:
        if keep_unlisted and e.filename is not None:
            found.append(Path(e.filename))

    for top, dirs, names in os.walk(folder, onerror=unlisted):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        found += (Path(top) / n for n in (*dirs, *names) if not is_hidden(n) and match(n))
    return sorted(found, key=lambda f: str(f))


def identity(path: Path) -> Path:
    """The resolved path, or the absolute one if it cannot be resolved (a symbolic link loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a link loop
        return path.absolute()


def common_root(files: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The deepest folder holding every one of ``files`` (absolute, symbolic links not resolved); None for no
    files or files on different drives."""
    parents = [os.path.dirname(os.path.abspath(f)) for f in files]
    try:
        return Path(os.path.commonpath(parents)) if parents else None
    except ValueError:  # different drives (Windows)
        return None


def exclude_under(files: list[Path], folder: Path) -> list[Path]:
    """``files`` without those inside ``folder`` (e.g. the run's own output folder)."""
    root = identity(folder)
    return [f for f in files if not identity(f).is_relative_to(root)]


def collect_inputs(args: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Return ``(files, missing)``.

    A folder contributes its image files recursively, without hidden ones (dot-files and the contents of
    dot-folders); a glob (``*``, ``?``, ``[...]``, ``**``) its matching image files and folders (a glob skips
    dot-names unless its pattern starts with a dot); an existing file is taken whatever its suffix or name (so a
    non-image or hidden file named on the command line is processed or reported, not skipped). Arguments that
    match nothing end up in ``missing``.
    """
    files: list[Path] = []
    missing: list[str] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            files += _images_under(p)
        elif p.exists() or p.is_symlink():  # a dangling link or a loop gets its own error row
            files.append(p)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                missing.append(arg)
            for m in map(Path, matches):
                if m.is_dir():
                    files += _images_under(m)
                elif is_image_path(m):
                    files.append(m)
        else:
            missing.append(arg)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = Path(os.path.abspath(f))  # the same name twice (``dir dir/a.png``); a link to a file is its own input
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, missing
