"""Importing TensorFlow for a command: its C++/absl start-up chatter hidden unless asked for.

TensorFlow prints absl INFO lines at import ("oneDNN custom operations are on", "Could not find
cuda drivers") and a ``failed call to cuInit`` error on machines without a GPU, before
``TF_CPP_MIN_LOG_LEVEL`` takes effect. :func:`import_tensorflow` sends file descriptor 2 to a
temporary file while TensorFlow imports and looks for devices, and replays what it caught only if
that fails.
"""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def _stderr_caught() -> Iterator[Any]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow(verbose: bool = False) -> Any:
    """Import and return ``tensorflow`` after its device discovery, quietly unless ``verbose``."""
    if verbose:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_caught() as caught:
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # cuInit happens here
        except BaseException:
            caught.seek(0)
            sys.stderr.buffer.write(caught.read())
            raise
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    return tf
