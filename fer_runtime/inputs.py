"""Expand command-line inputs (files, folders, globs) to a sorted, de-duplicated list of files."""
from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from fer_runtime.images import is_image_path


def _images_under(folder: Path) -> list[Path]:
    return sorted((f for f in folder.rglob("*") if f.is_file() and is_image_path(f)), key=lambda f: str(f))


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
        elif p.exists():
            files.append(p)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                missing.append(arg)
            for m in map(Path, matches):
                if m.is_dir():
                    files += _images_under(m)
                elif m.is_file() and is_image_path(m):
                    files.append(m)
        else:
            missing.append(arg)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, missing
