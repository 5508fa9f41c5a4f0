"""Typed errors of the project. Each message is one line a user can act on.

:class:`FerError` is the one base class: the runtime's errors below, and the training side's
(``fer_train.runs.RunError``, ``fer_train.data.DataFormatError``) and the exporter's
(``fer_export.errors.ExportError``) all derive from it, so a caller can catch every deliberate
error of the toolkit with one ``except FerError``.
"""
from __future__ import annotations


class FerError(Exception):
    """Base class of every error the toolkit raises on purpose."""


FerRuntimeError = FerError  # the runtime's earlier name for the base class


class ModelNotFoundError(FerRuntimeError, FileNotFoundError):
    """The model directory, its manifest, or a file the manifest lists is missing."""


class ModelIntegrityError(FerRuntimeError):
    """A model file's SHA-256 differs from the manifest, or the manifest/model is malformed."""

    def __init__(self, message: str, path: str | None = None, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class ManifestVersionError(ModelIntegrityError):
    """The manifest's ``format_version`` has a major version this fer-toolkit cannot read."""


class ProviderUnavailableError(FerRuntimeError):
    """An execution provider was asked for but is not available, or onnxruntime dropped it."""


class MissingOutputError(FerRuntimeError):
    """The model graph lacks an output a call needs (e.g. ``member_probs`` in files from an older fer-export)."""


class InvalidImageError(FerRuntimeError, ValueError):
    """An input image is unreadable, empty, or of an unsupported shape or dtype."""


class ImageTooLargeError(InvalidImageError):
    """An image file's header declares more pixels than the limit; it was refused before decoding."""


class InvalidVideoError(FerRuntimeError, ValueError):
    """A video file or camera cannot be opened, or yields no decodable frame."""


class InferenceError(FerError):
    """onnxruntime failed while running a model (the message names the model and ORT's reason)."""


class MissingDependencyError(FerError, ImportError):
    """An optional package a command needs is not installed (the message names the extra that installs it)."""


class ResumeError(FerError):
    """The interrupted run's files cannot be continued (other inputs or settings, or a damaged partial file)."""


class DistributedError(FerRuntimeError):
    """Ray is missing, cannot be reached, or a Ray job failed after its retries."""


# top-level module -> the fer-toolkit extra that installs it (pyproject.toml's optional-dependencies; tests/test_missing_deps.py
# checks the two agree)
EXTRAS = {"tensorflow": "train", "keras": "train", "tf2onnx": "train", "onnx": "train", "matplotlib": "train",
          "onnxruntime": "cpu", "ray": "ray", "tflite2onnx": "detector-build"}


def missing_dependency(error: ImportError) -> MissingDependencyError | None:
    """The typed error for an ImportError of one of the optional packages in :data:`EXTRAS`, else None (a bug)."""
    top = (getattr(error, "name", None) or "").split(".")[0]
    if not isinstance(error, ModuleNotFoundError) or top not in EXTRAS:
        return None
    return MissingDependencyError(f"{top} is not installed; install the {EXTRAS[top]!r} extra: "
                                  f"pip install 'fer-toolkit[{EXTRAS[top]}]' (or -e '.[{EXTRAS[top]}]' in a checkout)")


def first_line(e: BaseException, named: bool = False) -> str:
    """The first line of an exception's message for a one-line error (onnxruntime's and Keras' full texts run
    to many lines), or its class name if it has no text. ``named`` puts the class name in front of the text
    (``"OSError: text"``), once: a text-less exception gives ``"OSError"``, not ``"OSError: OSError"``."""
    return _line(e, 0, named)


def last_line(e: BaseException) -> str:
    """The last non-empty line of an exception's message (OpenCV's and Ray's texts end with the cause), or its
    class name if it has no text."""
    return _line(e, -1, False)


def _line(e: BaseException, index: int, named: bool) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    name = e.__class__.__name__
    if not lines:
        return name
    return f"{name}: {lines[index]}" if named else lines[index]
