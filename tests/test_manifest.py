"""The manifest's typed sub-schemas and its format_version policy. No TensorFlow."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fer_runtime import Predictor
from fer_runtime.errors import ManifestVersionError, ModelIntegrityError
from fer_runtime.manifest import (FORMAT_VERSION, MANIFEST_NAME, Calibration, InputSpec, Manifest, MemberEntry,
                                  Quantization, parse_format_version, read_manifest, write_manifest)


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("__pycache__", "*.png", "*.md")))


def _edit(folder: Path, change) -> None:
    d = json.loads((folder / MANIFEST_NAME).read_text())
    change(d)
    (folder / MANIFEST_NAME).write_text(json.dumps(d))


def test_shipped_manifest_is_typed_and_round_trips_byte_for_byte(model_dir: Path, tmp_path: Path) -> None:
    m = read_manifest(model_dir)
    v = m.variants[m.default_variant]
    assert isinstance(m.input, InputSpec) and m.input.name == "image" and m.input.shape == [None, 48, 48, 1]
    assert v.members and all(isinstance(e, MemberEntry) for e in v.members)
    assert isinstance(v.calibration, Calibration) and v.quantization is None
    with pytest.raises(AttributeError):
        v.members[0].name = "x"  # frozen
    write_manifest(tmp_path, m)
    assert (tmp_path / MANIFEST_NAME).read_text() == (model_dir / MANIFEST_NAME).read_text()


def test_files_of_others_are_what_a_writer_of_a_variant_must_not_overwrite(model_dir: Path) -> None:
    m = read_manifest(model_dir)
    if "fast-int8" not in m.variants:  # a model folder without the int8 copy (FER_MODEL_DIR): add one
        int8 = replace(m.variants["fast"], forward="fer_fast-int8.onnx",
                       quantization=Quantization("fast", "MinMax", 10, 10, 1.0, 0.6, 0.6))
        m = replace(m, variants={**m.variants, "fast-int8": int8})
    assert m.variants["fast-int8"].quantization.source == "fast"
    fast = {"fer_fast.onnx", "fer_fast_saliency.onnx", "fer_fast_weights.onnx_data"}
    accurate = {"fer_ensemble.onnx", "fer_saliency.onnx", "fer_weights.onnx_data"}
    int8, detector = {"fer_fast-int8.onnx"}, {"face_detector.onnx"}
    assert m.files_of_others("accurate") == fast | int8 | detector
    assert m.files_of_others("fast") == accurate | detector  # re-exporting fast drops its int8 copy
    assert m.files_of_others("fast-int8") == fast | accurate | detector  # re-quantizing keeps its source
    assert m.files_of_others("ensemble") == fast | int8 | accurate | detector
    without = replace(m, variants={k: v for k, v in m.variants.items() if k != "fast-int8"})
    assert without.files_of_others("accurate") == fast | detector


def test_unknown_keys_of_a_newer_minor_version_are_ignored(model_copy: Path) -> None:
    def newer_minor(d):
        d["format_version"] = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1] + 1}"
        d["signature"] = {"by": "a later fer-export"}
        d["input"]["mean"] = 0.5
        v = d["variants"][d["default_variant"]]
        v["license"] = "CC-BY"
        v["members"][0]["epochs"] = 40
        v["calibration"]["bins"] = 15
        next(iter(d["files"].values()))["created"] = "today"
    _edit(model_copy, newer_minor)
    m = read_manifest(model_copy)
    assert m.format_version == (FORMAT_VERSION[0], FORMAT_VERSION[1] + 1)
    assert not hasattr(m.variants[m.default_variant], "license")
    p = Predictor(model_copy, device="cpu")
    assert p.predict(__import__("numpy").zeros((1, 48, 48), "uint8")).shape == (1, 7)
    write_manifest(model_copy, m)  # re-written at this code's version, without the keys it does not know
    assert json.loads((model_copy / MANIFEST_NAME).read_text())["format_version"] == FORMAT_VERSION[0]


@pytest.mark.parametrize("where", ["top", "variant", "member", "calibration", "input", "file"])
def test_unknown_keys_at_this_version_are_refused(model_copy: Path, where: str) -> None:
    def typo(d):
        v = d["variants"][d["default_variant"]]
        target = {"top": d, "variant": v, "member": v["members"][0], "calibration": v["calibration"],
                  "input": d["input"], "file": next(iter(d["files"].values()))}[where]
        target["temprature"] = 1.0
    _edit(model_copy, typo)
    with pytest.raises(ModelIntegrityError, match="unknown key.*'temprature'"):
        read_manifest(model_copy)


@pytest.mark.parametrize("where, value, message", [
    ("default_variant", ["accurate"], "'default_variant' in the manifest must be a string"),
    ("labels", "Angry", "'labels' in the manifest must be a list of strings"),  # not 5 letters as labels
    ("forward", ["fer.onnx"], "'forward' in variant '.*' must be a string"),
    ("saliency", {"f": 1}, "'saliency' in variant '.*' must be a string or null"),
    ("temperature", "1.2", "'temperature' in variant '.*' must be a number"),
    ("params", True, "'params' in member 0 of variant '.*' must be an integer"),
    ("shape", [None, 48, "48", 1], "'shape' in input must be a list of integers or nulls"),
    ("detector file", {"f": 1}, "'file' in detector 'blazeface' must be a string"),
    ("bytes", "12", r"'bytes' in files\['.*'\] must be an integer"),
])
def test_a_wrongly_typed_value_is_a_one_line_integrity_error(model_copy: Path, where: str, value, message: str) -> None:
    def change(d):
        v = d["variants"][d["default_variant"]]
        target, key = {"default_variant": (d, where), "labels": (d, where), "forward": (v, where),
                       "saliency": (v, where), "temperature": (v, where), "params": (v["members"][0], where),
                       "shape": (d["input"], where), "detector file": (d["detectors"]["blazeface"], "file"),
                       "bytes": (next(iter(d["files"].values())), where)}[where]
        target[key] = value
    _edit(model_copy, change)
    with pytest.raises(ModelIntegrityError, match=message) as ei:  # not a TypeError from a later use
        Predictor(model_copy, device="cpu")
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["variants"].update({"../x": d["variants"][d["default_variant"]]}), r"variant name '\.\./x' must be"),
    (lambda d: d["files"].update({"../fer_fast.onnx": next(iter(d["files"].values()))}),
     r"file name '\.\./fer_fast\.onnx' under 'files' is not a plain file name"),
])
def test_names_that_would_reach_outside_the_model_folder_are_refused(model_copy: Path, change, message: str) -> None:
    _edit(model_copy, change)
    with pytest.raises(ModelIntegrityError, match=message):
        read_manifest(model_copy)



@pytest.mark.parametrize("field, value", [("shape", [None, 64, 64, 1]), ("range", [0, 1]), ("color", "rgb"),
                                          ("dtype", "uint8")])
def test_an_input_the_runtime_does_not_feed_is_refused(model_copy: Path, field: str, value) -> None:
    _edit(model_copy, lambda d: d["input"].update({field: value}))
    with pytest.raises(ModelIntegrityError, match=r"input declares .*; the runtime feeds shape \[None, 48, 48, 1\]"):
        read_manifest(model_copy)

@pytest.mark.parametrize("version", [FORMAT_VERSION[0] + 1, f"{FORMAT_VERSION[0] + 1}.0", 0])
def test_another_major_version_is_refused_in_one_line(model_copy: Path, version) -> None:
    _edit(model_copy, lambda d: d.update(format_version=version))
    with pytest.raises(ManifestVersionError) as ei:
        Predictor(model_copy, device="cpu")
    msg = str(ei.value)
    assert "\n" not in msg and MANIFEST_NAME in msg
    assert ("upgrade fer-toolkit" in msg) == (version != 0)


@pytest.mark.parametrize("value, want", [(1, (1, 0)), ("1.3", (1, 3)), ("2.0", (2, 0))])
def test_parse_format_version(value, want) -> None:
    assert parse_format_version(value) == want


@pytest.mark.parametrize("value", [True, "1", "1.x", 1.5, None, -1])
def test_bad_format_versions(value) -> None:
    with pytest.raises(ModelIntegrityError, match="format_version"):
        parse_format_version(value)


def test_to_dict_stores_absent_records_as_empty_objects(model_dir: Path) -> None:
    import dataclasses

    m = read_manifest(model_dir)
    name = m.default_variant
    m.variants[name] = dataclasses.replace(m.variants[name], calibration=None)
    d = m.to_dict()
    assert d["variants"][name]["calibration"] == {} and d["variants"][name]["quantization"] == {}
    assert Manifest.from_dict(d).variants[name].calibration is None


def _external_files(d: dict) -> set[str]:
    return {e for f in d["files"].values() for e in f.get("external", [])}


def test_version_1_model_folders_with_self_contained_graphs_still_load(model_copy: Path) -> None:
    """Folders exported before format 2 have no weights file: each graph holds its own weights."""
    onnx = pytest.importorskip("onnx")
    import numpy as np

    from fer_export.share import internalize
    from fer_runtime.manifest import sha256_bytes

    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    p2 = Predictor(model_copy, device="cpu")
    want_probs, want_sal = p2.predict(faces), p2.saliency(faces)
    d = json.loads((model_copy / MANIFEST_NAME).read_text())
    weights = _external_files(d)
    assert weights, "the shipped folder should keep its weights in a shared file (format 2)"
    for name, f in d["files"].items():
        if f.get("external"):
            files = {e: (model_copy / e).read_bytes() for e in f.pop("external")}
            data = internalize(onnx.load_from_string((model_copy / name).read_bytes()), files).SerializeToString()
            (model_copy / name).write_bytes(data)
            f["sha256"], f["bytes"] = sha256_bytes(data), len(data)
    for w in weights:
        del d["files"][w]
        (model_copy / w).unlink()
    d["format_version"] = 1
    (model_copy / MANIFEST_NAME).write_text(json.dumps(d))
    p1 = Predictor(model_copy, device="cpu")
    assert read_manifest(model_copy).format_version == (1, 0)
    np.testing.assert_array_equal(p1.predict(faces), want_probs)
    np.testing.assert_array_equal(p1.saliency(faces), want_sal)


def test_a_weights_file_needs_format_2_and_a_listed_file(model_copy: Path) -> None:
    d = json.loads((model_copy / MANIFEST_NAME).read_text())
    graph = next(k for k, f in d["files"].items() if f.get("external"))
    _edit(model_copy, lambda d: d.update(format_version=1))
    with pytest.raises(ModelIntegrityError, match="unknown key 'external'"):
        read_manifest(model_copy)
    _edit(model_copy, lambda d: (d.update(format_version=2), d["files"][graph].update(external=["ghost.onnx_data"])))
    with pytest.raises(ModelIntegrityError, match="ghost.onnx_data"):
        read_manifest(model_copy)
    _edit(model_copy, lambda d: d["files"][graph].update(external="ghost.onnx_data"))
    with pytest.raises(ModelIntegrityError, match=r"'external' in files\[.*\] must be a list of strings"):
        read_manifest(model_copy)
