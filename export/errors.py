"""Typed errors of the exporter. Each message is one line a user can act on."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fer_runtime.errors import FerError


class ExportError(FerError):
    """An export cannot be done or did not verify; nothing was written to the output directory."""


def refuse_overwrite(variant: str, taken: Iterable[str], manifest_path: Path, flag: str) -> None:
    """Raise :class:`ExportError` if writing ``variant`` would overwrite ``taken``, files that another variant or a
    detector in ``manifest_path`` uses (``Manifest.files_of_others``); ``flag`` is the option that names ``variant``."""
    if names := sorted(taken):
        raise ExportError(f"variant {variant!r} would overwrite {', '.join(names)}, which another variant or detector "
                          f"in {manifest_path} uses; choose another {flag}")


def check_writable_folder(path: Path, flag: str) -> None:
    """Raise :class:`ExportError` now, before any work, if the folder ``path`` (given as ``flag``) cannot be replaced
    in one step at the end (:func:`fer_runtime.atomic.check_stageable`: the working folder, or no write access)."""
    from fer_runtime.atomic import check_stageable

    try:
        check_stageable(path)
    except OSError as e:
        raise ExportError(f"{flag} {path}: cannot write there ({e.strerror}: {e.filename})") from None
