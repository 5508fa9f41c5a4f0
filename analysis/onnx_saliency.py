"""The ``--engine onnx`` saliency: the exported ONNX gradient graph (``fer_saliency.onnx``), run with onnxruntime.

Either an exported model directory (``manifest.json`` + the saliency file, verified by SHA-256
through :mod:`fer_runtime.manifest`) or the run exported on the fly into a temporary directory
with ``fer_export.exporter.export_models``.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fer_analysis.inputs import AnalysisError
from fer_runtime.errors import MissingDependencyError, first_line
from fer_runtime.labels import NUM_CLASSES
from fer_runtime.manifest import CLASS_INPUT, IMAGE_INPUT, PROBS, SALIENCY


@dataclass
class OnnxSaliency:
    """An onnxruntime session of a saliency graph and what the manifest says about it."""

    session: Any
    model_dir: Path
    variant: str
    filename: str
    tta: str
    exported_on_the_fly: bool = False
    temperature: float = 1.0  # the graph's probs are softmax(logits / temperature); the saliency does not depend on it
    input_name: str = IMAGE_INPUT  # the manifest's input.name

    def __call__(self, x: np.ndarray, classes: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(raw saliency [N,48,48,1], probs [N,7]) for raw 0..255 images and target classes."""
        x = np.asarray(x, np.float32)
        c = np.asarray(classes, np.int64)
        names = [o.name for o in self.session.get_outputs()]
        want = [SALIENCY] + ([PROBS] if PROBS in names else [])
        grads, probs = [], []
        for i in range(0, len(x), batch_size):
            out = self.session.run(want, {self.input_name: x[i:i + batch_size], CLASS_INPUT: c[i:i + batch_size]})
            grads.append(out[0])
            probs.append(out[1] if len(out) > 1 else np.full((len(out[0]), NUM_CLASSES), np.nan, np.float32))
        return np.concatenate(grads), np.concatenate(probs)


def open_model_dir(model_dir: str | Path, variant: str | None = None) -> OnnxSaliency:
    """Load the saliency graph of ``variant`` (default: the manifest's default) from an exported model dir."""
    from fer_runtime.errors import FerError
    from fer_runtime.manifest import read_manifest
    from fer_runtime.model_files import read_graph
    from fer_runtime.providers import CPU, onnxruntime

    model_dir = Path(model_dir)
    try:
        man = read_manifest(model_dir)
        name = variant or man.default_variant
        if name not in man.variants:
            raise AnalysisError(f"unknown variant {name!r} in {model_dir}; choose from {', '.join(man.variants)}")
        spec = man.variants[name]
        if not spec.saliency:
            raise AnalysisError(f"variant {name!r} in {model_dir} has no saliency graph; re-export it with fer-export")
        graph = read_graph(model_dir, man, spec.saliency)
        opts = onnxruntime().SessionOptions()  # MissingDependencyError if onnxruntime is not installed
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1  # another process may be training; stay light
        sess = graph.session([CPU], opts)
    except FerError as e:
        raise AnalysisError(f"--model-dir: {e}") from None
    return OnnxSaliency(sess, model_dir, name, spec.saliency, spec.tta, temperature=spec.temperature,
                        input_name=man.input.name)


@contextmanager
def exported_saliency(run: str | Path, model_dir: str | Path | None = None, verify_count: int = 16,
                      log: Any = lambda s: None) -> Iterator[OnnxSaliency]:
    """Yield the ONNX saliency of ``run``: from ``model_dir`` if given, else exported now into a temp dir."""
    if model_dir is not None:
        yield open_model_dir(model_dir)
        return
    try:
        from fer_export.errors import ExportError
        from fer_export.exporter import export_models
    except ImportError as e:
        raise AnalysisError(f"--engine onnx needs fer_export (or --model-dir DIR of an exported model): {e}") from None
    with tempfile.TemporaryDirectory(prefix="fer-analyze-onnx-") as tmp:
        out = Path(tmp) / "model"
        try:
            export_models([run], out, verify_count=verify_count, log=log)
        except ExportError as e:
            raise AnalysisError(f"exporting {run} to ONNX failed: {e}") from None
        except MissingDependencyError as e:  # its message names the extra already
            raise AnalysisError(f"exporting {run} to ONNX: {e}") from None
        except ImportError as e:  # tf2onnx, onnx or onnxruntime not installed
            raise AnalysisError(f"exporting {run} to ONNX needs {getattr(e, 'name', None) or first_line(e)}, which is "
                                "not installed (the 'train' and 'cpu' extras)") from None
        sal = open_model_dir(out)
        sal.exported_on_the_fly = True
        yield sal
