"""Typed errors of the exporter. Each message is one line a user can act on."""
from __future__ import annotations

from fer_runtime.errors import FerError


class ExportError(FerError):
    """An export cannot be done or did not verify; nothing was written to the output directory."""
