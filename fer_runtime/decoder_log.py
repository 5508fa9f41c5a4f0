"""Keep the image codecs' own chatter off the terminal while OpenCV decodes a file.

OpenCV logs through its own logger (``[ WARN:0@0.18] global grfmt_png.cpp ...``), which
``cv2.utils.logging.setLogLevel`` turns off. libpng and libjpeg, which OpenCV calls, print with
``fprintf(stderr, ...)`` (``libpng error: IDAT: invalid code lengths set``, ``Corrupt JPEG data:
...``): only redirecting file descriptor 2 silences them. While at least one thread is inside
:func:`quiet_decoders`, fd 2 points at a temporary file; when the last one leaves, fd 2 is restored
and every captured line that is not codec noise (another thread's warning, a progress bar) is
written to the real stderr, so nothing but the noise is lost. The error itself always reaches
the caller as an :class:`~fer_runtime.errors.InvalidImageError`.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import IO, Iterator

import cv2

# Lines the codecs print on their own (libpng, libjpeg(-turbo), libtiff, libwebp via OpenCV) and OpenCV's logger.
NOISE = re.compile(rb"^(libpng (error|warning)|Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Bogus |"
                   rb"Unsupported marker|Warning: unknown JFIF|Not a JPEG|JPEG datastream|Huffman table|"
                   rb"Quantization table|TIFF|\S+: Warning,|\[ ?(WARN|ERROR|INFO|DEBUG):)")

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture: IO[bytes] | None = None
_saved_level: int | None = None


def _enter() -> None:
    global _depth, _saved_fd, _capture, _saved_level
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        try:
            _flush_python_stderr()
            _capture = tempfile.TemporaryFile()
            _saved_fd = os.dup(2)
            os.dup2(_capture.fileno(), 2)
        except OSError:  # no fd 2 (a service), or out of descriptors: decode anyway, only noisier
            _restore_fd()
        _saved_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _exit() -> None:
    global _depth, _saved_level
    with _lock:
        _depth -= 1
        if _depth > 0:
            return
        if _saved_level is not None:
            cv2.utils.logging.setLogLevel(_saved_level)
            _saved_level = None
        _flush_python_stderr()
        _restore_fd()


def _restore_fd() -> None:
    """Point fd 2 back at the real stderr and forward what was captured, minus the codec noise."""
    global _saved_fd, _capture
    if _saved_fd is not None:
        os.dup2(_saved_fd, 2)
        os.close(_saved_fd)
        _saved_fd = None
    if _capture is not None:
        try:
            _capture.seek(0)
            kept = [line for line in _capture.read().splitlines(keepends=True) if not NOISE.match(line.lstrip(b"\r"))]
            if kept:
                os.write(2, b"".join(kept))
        except OSError:
            pass
        finally:
            _capture.close()
            _capture = None


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


@contextmanager
def quiet_decoders(enabled: bool = True) -> Iterator[None]:
    """Silence OpenCV's logger and the codecs' stderr output inside the block (a no-op if not ``enabled``)."""
    if not enabled:
        yield
        return
    _enter()
    try:
        yield
    finally:
        _exit()
