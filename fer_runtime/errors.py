"""Typed errors of the runtime. Each message is one line a user can act on."""
from __future__ import annotations


class FerRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelNotFoundError(FerRuntimeError, FileNotFoundError):
    """The model directory, its manifest, or a file the manifest lists is missing."""


class ModelIntegrityError(FerRuntimeError):
    """A model file's SHA-256 differs from the manifest, or the manifest/model is malformed."""

    def __init__(self, message: str, path: str | None = None, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class ProviderUnavailableError(FerRuntimeError):
    """An execution provider was asked for but is not available, or onnxruntime dropped it."""


class MissingOutputError(FerRuntimeError):
    """The model graph lacks an output a call needs (e.g. ``member_probs`` in files from an older fer-export)."""


class InvalidImageError(FerRuntimeError, ValueError):
    """An input image is unreadable, empty, or of an unsupported shape or dtype."""


class InvalidVideoError(FerRuntimeError, ValueError):
    """A video file or camera cannot be opened, or yields no decodable frame."""
