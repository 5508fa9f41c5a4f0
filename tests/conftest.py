"""Fixtures shared by the runtime tests (test_runtime, test_infer_cli, test_video).

Never imports TensorFlow, and imports fer_runtime only inside the fixtures, so that collecting the
training/export tests does not load the runtime and the runtime tests stay TensorFlow-free.
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:  # pragma: no cover
    from fer_runtime import Predictor

FER_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fer2013_small.csv.gz"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported model folder (``$FER_MODEL_DIR`` or the packaged models); skips the test if it has none."""
    from fer_runtime import default_model_dir
    from fer_runtime.manifest import MANIFEST_NAME

    d = default_model_dir()
    if not (d / MANIFEST_NAME).exists():
        pytest.skip(f"no exported models in {d} (run fer-export, or set FER_MODEL_DIR)")
    return d


@pytest.fixture(scope="module")
def predictor_options() -> dict[str, Any]:
    """Extra ``Predictor`` keyword arguments for the ``predictor`` fixture; override in a test module."""
    return {}


@pytest.fixture(scope="module")
def predictor(model_dir: Path, predictor_options: dict[str, Any]) -> Predictor:
    """A CPU, single-thread ``Predictor`` over ``model_dir``, one per test module."""
    from fer_runtime import Predictor

    return Predictor(model_dir, device="cpu", threads=1, **predictor_options)


@pytest.fixture(scope="session")
def fer_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faces uint8 [N,48,48], labels [N], is_test [N]) from the real FER2013 fixture rows."""
    with gzip.open(FER_FIXTURE, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    faces = np.array([np.array(r["pixels"].split(), np.uint8).reshape(48, 48) for r in rows])
    return faces, np.array([int(r["emotion"]) for r in rows]), np.array([r["Usage"] != "Training" for r in rows])


@pytest.fixture(scope="session")
def faces(fer_rows: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Real FER2013 faces, uint8 [N, 48, 48]."""
    return fer_rows[0]
