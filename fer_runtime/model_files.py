"""A model graph as onnxruntime gets it: the verified bytes of its file and of the weights file it names.

Every reader of an exported model directory (the predictor, the face detector, the exporter's and the
quantizer's checks, the analysis suite and the benchmarks) follows one rule, defined here: each file is
checked against the manifest's SHA-256 before use, and the session is built from exactly the bytes that
were checked, the external weights included (they are handed to onnxruntime from memory, never re-read
from disk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_runtime.errors import FerRuntimeError
from fer_runtime.manifest import Manifest, load_verified
from fer_runtime.providers import onnxruntime

MIN_ORT_FOR_EXTERNAL = "1.24"  # SessionOptions.add_external_initializers_from_files_in_memory


@dataclass(frozen=True)
class VerifiedGraph:
    """A graph file's verified bytes, and its external weights files' (name -> verified bytes)."""

    path: Path
    data: bytes
    external: dict[str, bytes] = field(default_factory=dict)

    def session_options(self, options: Any = None) -> Any:
        """``options`` (a new ``onnxruntime.SessionOptions`` if None), given this graph's external weights."""
        ort = onnxruntime()

        so = options if options is not None else ort.SessionOptions()
        if self.external:
            add = getattr(so, "add_external_initializers_from_files_in_memory", None)
            if add is None:
                raise FerRuntimeError(f"{self.path} keeps its weights in {', '.join(self.external)}: loading it needs "
                                      f"onnxruntime >= {MIN_ORT_FOR_EXTERNAL} (installed: {ort.__version__}); "
                                      "pip install -U onnxruntime")
            names = list(self.external)
            add(names, [self.external[n] for n in names], [len(self.external[n]) for n in names])
        return so

    def session(self, providers: list[Any], options: Any = None) -> Any:
        """An ``onnxruntime.InferenceSession`` built from these bytes (onnxruntime's own errors propagate)."""
        ort = onnxruntime()

        return ort.InferenceSession(self.data, sess_options=self.session_options(options), providers=providers)


def read_graph(model_dir: str | Path, manifest: Manifest, filename: str,
               cache: dict[str, bytes] | None = None) -> VerifiedGraph:
    """Read and verify ``filename`` and its weights files; ``cache`` (name -> bytes) keeps weights files read once."""
    model_dir = Path(model_dir)
    data = load_verified(model_dir, manifest, filename)
    external: dict[str, bytes] = {}
    for name in manifest.files[filename].external:
        if cache is not None and name in cache:
            external[name] = cache[name]
            continue
        external[name] = load_verified(model_dir, manifest, name)
        if cache is not None:
            cache[name] = external[name]
    return VerifiedGraph(model_dir / filename, data, external)
