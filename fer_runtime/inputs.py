"""Expand command-line inputs (files, folders, globs) to a sorted, de-duplicated list of files."""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from fer_runtime.images import is_image_path


def _images_under(folder: Path) -> list[Path]:
    """Every entry under ``folder`` named like an image, whatever it is: a dangling symbolic link, a link loop,
    a FIFO or a folder called ``x.png`` is listed too, so that it gets an error row instead of vanishing.
    Symbolic links to folders are not followed (no loops)."""
    return sorted((f for f in folder.rglob("*") if is_image_path(f)), key=lambda f: str(f))


def identity(path: Path) -> Path:
    """The resolved path, or the absolute one if it cannot be resolved (a symbolic link loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a link loop
        return path.absolute()


def exclude_under(files: list[Path], folder: Path) -> list[Path]:
    """``files`` without those inside ``folder`` (e.g. the run's own output folder)."""
    root = identity(folder)
    return [f for f in files if not identity(f).is_relative_to(root)]


def collect_inputs(args: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Return ``(files, missing)``.

    A folder contributes its image files recursively; a glob (``*``, ``?``, ``[...]``, ``**``) its matching
    image files and folders; an existing file is taken whatever its suffix (so a non-image named on the
    command line is reported, not skipped). Arguments that match nothing end up in ``missing``.
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
