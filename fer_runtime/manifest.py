"""The model manifest (``manifest.json``), defined once for the exporter (writer) and runtime (reader).

Layout (format_version 1)::

    {
      "format_version": 1,
      "labels": ["Angry", ...],                       # class order of every output
      "input": {"name": "image", "shape": [null, 48, 48, 1], "dtype": "float32",
                "color": "gray", "range": [0, 255],
                "preprocessing_in_graph": "..."},       # what the graph already does
      "default_variant": "accurate",
      "variants": {
        "accurate": {"forward": "fer_ensemble.onnx", "saliency": "fer_saliency.onnx",
                     "members": [{"name": ..., "params": ..., "public_test_accuracy": ...}],
                     "temperature": 1.0, "tta": "none", "description": "...",
                     "calibration": {"fitted_on": "PublicTest", "temperature": ..., "nll_before": ...,
                                     "nll_after": ..., "ece_before": ..., "ece_after": ..., "images": ...}}
      },
      "files": {"fer_ensemble.onnx": {"sha256": "...", "bytes": 123,
                                       "inputs": [{"name", "shape", "dtype"}], "outputs": [...]}},
      "producer": {"tensorflow": ..., "tf2onnx": ..., "onnx": ..., "opset": 17},
      "created": "2026-11-22T06:00:00Z"
    }
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fer_runtime.errors import ModelIntegrityError, ModelNotFoundError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class TensorSpec:
    name: str
    shape: list[int | None]
    dtype: str


@dataclass
class FileEntry:
    sha256: str
    bytes: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)


@dataclass
class Variant:
    forward: str
    saliency: str | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    temperature: float = 1.0
    tta: str = "none"
    description: str = ""
    # how the temperature was chosen, e.g. {"fitted_on": "PublicTest", "temperature", "nll_before",
    # "nll_after", "ece_before", "ece_after", "images"}; empty when it was given by hand (older manifests)
    calibration: dict[str, Any] = field(default_factory=dict)
    # for a quantized variant: {"source", "method", "calibration_images", "eval_images", "agreement",
    # "accuracy_fp32", "accuracy_int8"}; empty for float models
    quantization: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    labels: list[str]
    input: dict[str, Any]
    variants: dict[str, Variant]
    files: dict[str, FileEntry]
    producer: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    default_variant: str = "accurate"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metadata_props(self, variant: str) -> dict[str, str]:
        """Flat string metadata for ONNX ``metadata_props`` (file hashes excluded: a file cannot hold its own)."""
        v = self.variants[variant]
        return {
            "fer.format_version": str(self.format_version),
            "fer.labels": json.dumps(self.labels),
            "fer.input": json.dumps(self.input),
            "fer.variant": variant,
            "fer.members": json.dumps(v.members),
            "fer.temperature": repr(v.temperature),
            "fer.tta": v.tta,
            "fer.calibration": json.dumps(v.calibration),
            "fer.producer": json.dumps(self.producer),
            "fer.created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_NAME) -> "Manifest":
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise ModelIntegrityError(f"{where}: format_version {d.get('format_version')!r} is not {FORMAT_VERSION}; "
                                          "upgrade fer-toolkit or re-export the models")
            files = {k: FileEntry(v["sha256"], int(v["bytes"]),
                                  [TensorSpec(**t) for t in v.get("inputs", [])],
                                  [TensorSpec(**t) for t in v.get("outputs", [])]) for k, v in d["files"].items()}
            variants = {k: Variant(**v) for k, v in d["variants"].items()}
            m = cls(labels=list(d["labels"]), input=dict(d["input"]), variants=variants, files=files,
                    producer=dict(d.get("producer", {})), created=str(d.get("created", "")),
                    default_variant=d.get("default_variant", "accurate"), format_version=d["format_version"])
        except ModelIntegrityError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelIntegrityError(f"{where}: malformed manifest ({e.__class__.__name__}: {e})") from None
        for name, v in m.variants.items():
            for f in (v.forward, v.saliency):
                if f is not None and f not in m.files:
                    raise ModelIntegrityError(f"{where}: variant {name!r} names {f!r}, which is not under 'files'")
        if m.default_variant not in m.variants:
            raise ModelIntegrityError(f"{where}: default_variant {m.default_variant!r} is not a variant")
        return m


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/manifest.json``."""
    p = Path(model_dir) / MANIFEST_NAME
    if not Path(model_dir).is_dir():
        raise ModelNotFoundError(f"model directory {model_dir} does not exist")
    if not p.exists():
        raise ModelNotFoundError(f"{p} not found; is {model_dir} an exported model directory?")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelIntegrityError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ModelIntegrityError(f"{p}: expected a JSON object")
    return Manifest.from_dict(d, str(p))


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically."""
    p = Path(model_dir) / MANIFEST_NAME
    data = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".manifest.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def load_verified(model_dir: Path, manifest: Manifest, filename: str) -> bytes:
    """Read a model file once, check its size and SHA-256 against the manifest, and return those bytes.

    The returned bytes are the ones verified, so they are what the session must be built from.
    """
    entry = manifest.files.get(filename)
    if entry is None:
        raise ModelIntegrityError(f"{filename} is not listed in {Path(model_dir) / MANIFEST_NAME}")
    path = Path(model_dir) / filename
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} is listed in the manifest but missing") from None
    actual = sha256_bytes(data)
    if actual != entry.sha256 or len(data) != entry.bytes:
        raise ModelIntegrityError(
            f"SHA256 hash of {path} does not match the manifest: expected {entry.sha256} ({entry.bytes} bytes), "
            f"got {actual} ({len(data)} bytes); the file is corrupt or was replaced, re-export or reinstall it",
            str(path), entry.sha256, actual)
    return data
