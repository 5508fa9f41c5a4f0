"""Static int8 quantization of an exported variant (fer_export.quantize, ``fer-quantize``): the gate, the manifest, the runtime.

A tiny Keras model is exported as variant ``fast`` into a temp folder and quantized with calibration and
evaluation images from the committed FER2013 fixture.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.tf
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import onnx  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fer_export.errors import ExportError  # noqa: E402
from fer_export.exporter import export_models  # noqa: E402
from fer_export.quantize import QuantizationRefusedError, quantize_variant  # noqa: E402
from fer_export.quantize_cli import app  # noqa: E402
from fer_runtime import Predictor  # noqa: E402
from fer_runtime.manifest import read_manifest, sha256_file  # noqa: E402
from fer_train.data import load_kaggle_csv  # noqa: E402
from fer_train.models import ModelConfig, build_model  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"


@pytest.fixture(scope="module")
def data():
    return load_kaggle_csv(FIX)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data) -> Path:
    """A folder with one variant, ``fast``: a tiny CNN, fitted briefly; its predictions spread over several classes."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(filters=4, blocks=2, convs_per_block=1, units=16))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    tr = data["Training"]
    model.fit(tr.x.astype("float32"), tr.y, epochs=12, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("q")
    model.save(root / "tiny.keras")
    out = root / "models"
    export_models([root / "tiny.keras"], out, variant="fast", verify_data=FIX, verify_count=20)
    return out


@pytest.fixture()
def models(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "models"))


def _snapshot(folder: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir())


def test_refused_variant_writes_nothing(models: Path, data) -> None:
    before = _snapshot(models)
    with pytest.raises(QuantizationRefusedError, match="fast-int8 not shipped: .*accuracy loss") as e:
        quantize_variant(models, data["Training"].x[:100], data["PublicTest"].x, data["PublicTest"].y,
                         max_accuracy_loss=-1.0)  # it would have to gain 100 points
    rep = e.value.report
    assert not rep.shipped and "accuracy loss" in rep.reason and rep.eval_images == len(data["PublicTest"].x)
    test = data["PublicTest"]
    p32 = Predictor(models, model="fast", device="cpu").predict(test.x)
    assert rep.accuracy_fp32 == pytest.approx(np.mean(p32.argmax(1) == test.y))  # measured, not made up
    assert rep.accuracy_loss == pytest.approx(rep.accuracy_fp32 - rep.accuracy_int8) and rep.accuracy_loss > -1.0
    assert _snapshot(models) == before


def _assert_logits_layers_float(graph) -> None:
    """No logits layer is int8 and nothing rounds logits: 8-bit logits would tie near-equal classes."""
    int8_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    dequant = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")
              and shapes.get(dequant.get(n.input[1], n.input[1]), (0,))[-1] == 7]
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(layers) == len(softmax)  # every logits layer (units x 7) is found: one per softmax
    for n in layers:
        assert dequant.get(n.input[1]) not in int8_weights, n.name
    softmax_inputs = {n.input[0] for n in softmax}
    assert softmax_inputs and not softmax_inputs & set(dequant) and "logits" not in dequant
    assert not {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "logits"}


def test_accepted_variant_is_int8_verified_and_selectable(models: Path, data) -> None:
    test = data["PublicTest"]
    rep = quantize_variant(models, data["Training"].x[:120], test.x, test.y, min_agreement=0.0, max_accuracy_loss=1.0)
    assert rep.shipped and rep.forward == models / "fer_fast-int8.onnx"
    m = read_manifest(models)
    v, src = m.variants["fast-int8"], m.variants["fast"]
    assert v.forward == "fer_fast-int8.onnx" and v.saliency == src.saliency and m.default_variant == "fast"
    assert m.files[v.forward].sha256 == sha256_file(models / v.forward)
    assert v.quantization.source == "fast" and v.quantization.calibration_images == 120
    assert v.quantization.agreement == pytest.approx(rep.agreement, abs=1e-6)

    graph = onnx.load(str(models / v.forward)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)  # weights really are int8
    _assert_logits_layers_float(graph)
    fp32, int8 = Predictor(models, model="fast", device="cpu"), Predictor(models, model="fast-int8", device="cpu")
    p32, p8 = fp32.predict(test.x), int8.predict(test.x)
    assert np.mean(p32.argmax(1) == p8.argmax(1)) == pytest.approx(rep.agreement)  # the report's own figure
    assert np.mean(p8.argmax(1) == test.y) == pytest.approx(rep.accuracy_int8)
    assert len(np.unique(p32.argmax(1))) >= 2  # not a constant classifier, so agreement means something
    assert np.abs(p32 - p8).mean() < 0.05
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-4)
    assert int8.saliency(test.x[:2]).shape == (2, 48, 48)  # the float saliency graph still works


def test_an_ensemble_with_flip_tta_keeps_every_logits_layer_float(exported: Path, tmp_path: Path, data) -> None:
    """Two members, two views: several logits layers, a temperature and a mean between them and the softmax."""
    import onnx as _onnx

    from fer_export.quantize import quantize_graph
    from fer_export.share import internalize
    from fer_runtime.model_files import read_graph

    tiny = exported.parent / "tiny.keras"
    twin_copy = tmp_path / "tiny2.keras"
    shutil.copy(tiny, twin_copy)
    out = tmp_path / "ens"
    export_models([tiny, twin_copy], out, variant="pair", tta="flip", temperature=1.5, verify_data=FIX, verify_count=10)
    man = read_manifest(out)
    g = read_graph(out, man, man.variants["pair"].forward)
    int8 = quantize_graph(internalize(_onnx.load_from_string(g.data), g.external),
                          data["Training"].x[:40].reshape(-1, 48, 48, 1).astype(np.float32), man.input.name)
    assert any(t.data_type == _onnx.TensorProto.INT8 for t in int8.graph.initializer)  # the convs are int8
    _assert_logits_layers_float(int8.graph)
    assert sum(n.op_type == "Softmax" for n in int8.graph.node) >= 2  # more than one logits layer to keep float


def test_the_working_folder_is_refused_before_calibrating(models: Path, data, monkeypatch) -> None:
    """cd models && fer-quantize --model-dir . would swap the shell's folder away: refused before any work."""
    import fer_export.quantize as quantize

    def no_work(*a, **k):
        raise AssertionError("calibrated")

    monkeypatch.setattr(quantize, "quantize_graph", no_work)
    monkeypatch.chdir(models)
    before = _snapshot(models)
    with pytest.raises(ExportError, match=r"--model-dir \.: cannot write there \(it is the working folder"):
        quantize_variant(".", data["Training"].x[:40], data["PublicTest"].x, data["PublicTest"].y)
    assert _snapshot(models) == before


def _activation_scales(model) -> dict[str, float]:
    """Each quantized activation's scale in a QDQ graph (QuantizeLinear nodes whose input is not a weight)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_entropy_calibration_clips_ranges_minmax_keeps(models: Path, data) -> None:
    """At onnxruntime's default 128 histogram bins its entropy search has one candidate, the full range, and gives
    MinMax's numbers; here the KL search runs over 2048 bins and narrows some activation ranges, widening none."""
    from fer_export.quantize import quantize_graph
    from fer_export.share import internalize
    from fer_runtime.model_files import read_graph

    man = read_manifest(models)
    g = read_graph(models, man, man.variants["fast"].forward)
    x = data["Training"].x[:120].reshape(-1, 48, 48, 1).astype(np.float32)
    scales = {m: _activation_scales(quantize_graph(internalize(onnx.load_from_string(g.data), g.external), x,
                                                   man.input.name, m)) for m in ("minmax", "entropy")}
    assert scales["minmax"].keys() == scales["entropy"].keys() and len(scales["minmax"]) > 4
    ratios = [scales["entropy"][k] / scales["minmax"][k] for k in scales["minmax"]]
    assert max(ratios) <= 1 + 1e-6 and min(ratios) < 0.9, ratios

    # onnxruntime's own entropy calibrator as quantize_static creates it (128 bins): MinMax's ranges exactly
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from fer_export.quantize import _calibration_reader

    ranges = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(internalize(onnx.load_from_string(g.data), g.external), str(path))
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy):
            cal = create_calibrator(path, None, augmented_model_path=str(Path(tmp) / f"{method}.onnx"),
                                    calibrate_method=method)
            cal.collect_data(_calibration_reader(x, man.input.name))
            ranges[method] = {k: np.ravel(v.range_value).astype(np.float64) for k, v in cal.compute_data().items()}
    assert ranges[CalibrationMethod.MinMax].keys() == ranges[CalibrationMethod.Entropy].keys()
    for k, v in ranges[CalibrationMethod.MinMax].items():
        np.testing.assert_allclose(ranges[CalibrationMethod.Entropy][k], v, rtol=1e-6, err_msg=k)


def test_unknown_source_and_bad_images(models: Path, data) -> None:
    from fer_export.errors import ExportError

    x, y = data["PublicTest"].x, data["PublicTest"].y
    with pytest.raises(ExportError, match="variant 'accurate' is not in"):
        quantize_variant(models, x, x, y, source="accurate")
    with pytest.raises(ExportError, match="48x48"):
        quantize_variant(models, x[:, :40], x, y)
    with pytest.raises(ExportError, match="labels"):
        quantize_variant(models, x, x, y[:5])
    before = sorted(p.name for p in models.rglob("*"))
    for target in ("x/../../y", "../fast", ""):  # the exporter's variant-name rule: no file outside the folder
        with pytest.raises(ExportError, match="variant name .* must be 1-64 letters"):
            quantize_variant(models, x, x, y, target=target, min_agreement=0.0, max_accuracy_loss=1.0)
    assert sorted(p.name for p in models.rglob("*")) == before and not (models.parent / "y.onnx").exists()


def test_a_new_variant_cannot_overwrite_another_variants_files(models: Path, exported: Path, data) -> None:
    # `fast_saliency`'s forward graph would be named fer_fast_saliency.onnx: `fast`'s saliency graph
    before = _snapshot(models)
    x, y = data["PublicTest"].x, data["PublicTest"].y
    with pytest.raises(ExportError, match="'fast_saliency' would overwrite fer_fast_saliency.onnx, which another.*"
                                          "manifest.json uses; choose another --target$"):
        quantize_variant(models, data["Training"].x[:60], x, y, target="fast_saliency", min_agreement=0.0,
                         max_accuracy_loss=1.0)
    with pytest.raises(ExportError, match="'fast_saliency' would overwrite fer_fast_saliency.onnx, which another.*"
                                          "manifest.json uses; choose another --variant$"):
        export_models([exported.parent / "tiny.keras"], models, variant="fast_saliency", verify_data=FIX,
                      verify_count=10)
    assert _snapshot(models) == before
    assert Predictor(models, model="fast", device="cpu").predict(x[:4]).shape == (4, 7)  # still verified


def test_target_cannot_replace_a_float_variant_and_reexport_drops_a_stale_int8(models: Path, exported: Path,
                                                                               data) -> None:
    tiny = exported.parent / "tiny.keras"
    export_models([tiny], models, variant="accurate", verify_data=FIX, verify_count=10)
    x, y = data["PublicTest"].x, data["PublicTest"].y
    before = _snapshot(models)
    with pytest.raises(ExportError, match="'accurate' already exists and is not an int8 copy of 'fast'"):
        quantize_variant(models, data["Training"].x[:60], x, y, target="accurate", min_agreement=0.0,
                         max_accuracy_loss=1.0)
    assert _snapshot(models) == before
    for _ in range(2):  # quantizing again replaces its own int8 copy
        quantize_variant(models, data["Training"].x[:60], x, y, min_agreement=0.0, max_accuracy_loss=1.0)
    assert set(read_manifest(models).variants) == {"fast", "fast-int8", "accurate"}
    export_models([tiny], models, variant="fast", verify_data=FIX, verify_count=10)  # a new fast
    m = read_manifest(models)
    assert set(m.variants) == {"fast", "accurate"} and not (models / "fer_fast-int8.onnx").exists()
    assert m.variants["accurate"].forward in m.files  # the other variant is untouched


def test_cli_gate_exit_codes(models: Path) -> None:
    runner = CliRunner()
    before = _snapshot(models)
    res = runner.invoke(app, ["--data", str(FIX), "--model-dir", str(models), "--calibration-count", "1",
                              "--max-accuracy-loss", "0", "--min-agreement", "1"])
    # ranges from a single face clip most others, so int8 cannot match on every PublicTest image: a refusal
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: fast-int8 not shipped: argmax agreement")
    assert _snapshot(models) == before
    res = runner.invoke(app, ["--data", str(FIX), "--model-dir", str(models), "--calibration-count", "50",
                              "--max-accuracy-loss", "1", "--min-agreement", "0"])
    assert res.exit_code == 0, res.output
    assert "argmax agreement with fp32" in res.output and "fast-int8" in read_manifest(models).variants
    res = runner.invoke(app, ["--data", str(FIX.parent / "nope.csv"), "--model-dir", str(models)])
    assert res.exit_code == 2 and res.output.startswith("error: ")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_methods(models: Path, data, method: str) -> None:
    """The histogram calibrators need equal-sized batches: 130 images calibrate on 120 and evaluate on all."""
    rep = quantize_variant(models, data["Training"].x[:130], data["PublicTest"].x, data["PublicTest"].y,
                           min_agreement=0.0, max_accuracy_loss=1.0, calibrate_method=method)
    assert rep.shipped and rep.calibration_images == 120 and rep.eval_images == len(data["PublicTest"].x)
    v = read_manifest(models).variants["fast-int8"]
    assert v.quantization.method.endswith(f"({method.capitalize()}), float logits layer and softmax")
    assert Predictor(models, model="fast-int8").predict(data["PublicTest"].x[:3]).shape == (3, 7)
    with pytest.raises(ExportError, match="unknown calibration method 'kl'"):
        quantize_variant(models, data["Training"].x[:40], data["PublicTest"].x, data["PublicTest"].y,
                         calibrate_method="kl")
