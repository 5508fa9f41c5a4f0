"""``fer-train int8-grid`` (fer_train.int8_grid): batch norm folded without changing the function, kernels on the
very grid onnxruntime's static quantization uses, and the derived run folder."""
from __future__ import annotations

from dataclasses import replace

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typer.testing import CliRunner  # noqa: E402

from fer_train import runs  # noqa: E402
from fer_train.cli import app  # noqa: E402
from fer_train.config import read_run_config  # noqa: E402
from fer_train.fit import TrainConfig  # noqa: E402
from fer_train.int8_grid import INT8_LEVELS, fold_batch_norm, make_int8_ready, on_grid, snap_kernels  # noqa: E402
from fer_train.models import ModelConfig, build_model  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
CFG = ModelConfig(filters=4, blocks=2, convs_per_block=2, units=16, conv_dropout=0.0, dense_dropout=0.0)


def _model_with_statistics(cfg: ModelConfig = CFG, seed: int = 0):
    """A CNN whose batch norms have non-trivial scale, offset and moving statistics (as after training)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[-1]
            layer.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.5, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.2, 3.0, n)])
    return model


def _run_folder(tmp_path: Path, model) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    runs.save_keras(model, run / runs.BEST, include_optimizer=False)
    runs.write_json(run / runs.CONFIG, {"model": CFG.to_dict(),
                                        "train": TrainConfig(data=os.path.relpath(FIX, run)).to_dict(),
                                        "data": {"path": os.path.relpath(FIX, run), "validation": "PublicTest"}})
    return run


@pytest.mark.parametrize("cfg", [CFG, replace(CFG, arch="resnet")], ids=["cnn", "resnet"])
def test_folding_batch_norm_keeps_the_function(faces, cfg: ModelConfig) -> None:
    """Also in a residual net, where a projection's batch norm is not the layer after its conv in ``model.layers``."""
    import keras

    model = _model_with_statistics(cfg)
    folded, folded_cfg = fold_batch_norm(model, cfg)
    assert not folded_cfg.batch_norm and cfg.batch_norm
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    assert all(l.use_bias for l in folded.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)))
    x = faces[:64, :, :, None].astype("float32")
    p, q = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    keras.utils.set_random_seed(0)
    plain = build_model(cfg)  # the same weights with untrained (identity) batch norms
    assert np.abs(p - plain.predict(x, verbose=0)).max() > 0.05  # so the statistics matter
    np.testing.assert_allclose(q, p, atol=2e-5)


def test_a_resnet_that_is_sound_only_with_batch_norm_is_not_folded() -> None:
    cfg = replace(CFG, arch="resnet", cnn_activation="leakyrelu")  # see test_models: TF miscomputes it folded
    with pytest.raises(ValueError, match="batch norm cannot be folded out of this net: a resnet with leakyrelu"):
        fold_batch_norm(_model_with_statistics(cfg), cfg)


def test_a_model_not_built_from_the_config_is_refused() -> None:
    model = _model_with_statistics()
    with pytest.raises(ValueError, match="not in the model"):
        fold_batch_norm(model, ModelConfig(filters=4, blocks=3, convs_per_block=2, units=16))


def test_snapped_kernels_are_on_the_grid_and_keep_each_channel_maximum() -> None:
    rng = np.random.default_rng(1)
    k = rng.normal(0, 0.1, (3, 3, 5, 6)).astype(np.float32)
    k[..., 2] = 0.0  # a dead channel stays zero
    s = on_grid(k)
    step = np.abs(k).max(axis=(0, 1, 2)) / INT8_LEVELS
    live = step > 0
    levels = s[..., live] / step[live]
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    np.testing.assert_allclose(np.abs(s).max(axis=(0, 1, 2)), np.abs(k).max(axis=(0, 1, 2)), rtol=1e-6)
    assert np.all(s[..., 2] == 0) and np.abs(s - k).max() <= step.max() / 2 + 1e-7
    model = _model_with_statistics()
    logits = model.get_layer("logits").get_weights()[0]
    assert snap_kernels(model) == 2 * 2 + 1  # four convs and the dense layer
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0], logits)  # fer-quantize keeps it float
    dense = model.get_layer("dense1").get_weights()[0]
    np.testing.assert_array_equal(dense, on_grid(dense))


def test_the_int8_weights_of_an_int8_ready_member_are_its_float_weights(tmp_path: Path, faces) -> None:
    """onnxruntime's quantizer, run by fer-quantize, must round the snapped kernels to themselves."""
    import onnx
    from onnx import numpy_helper

    from fer_export.exporter import export_models
    from fer_export.quantize import quantize_graph
    from fer_export.share import internalize
    from fer_runtime.manifest import read_manifest
    from fer_runtime.model_files import read_graph

    model = _model_with_statistics()
    run = _run_folder(tmp_path, model)
    ready = make_int8_ready(run, tmp_path / "ready")

    def weight_error(member: Path) -> float:
        """Largest |int8 weight - float weight| / max|float weight| over the quantized graph's kernels."""
        out = tmp_path / f"models_{member.parent.name}"
        export_models([member], out, variant="fast", verify_data=FIX, verify_count=8)
        man = read_manifest(out)
        g = read_graph(out, man, man.variants["fast"].forward)
        fp32 = internalize(onnx.load_from_string(g.data), g.external)
        int8 = quantize_graph(fp32, faces[:40, :, :, None].astype(np.float32), man.input.name)
        floats = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
        ints = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
        errors = []
        for n in int8.graph.node:
            q = ints.get(n.input[0])
            if n.op_type == "DequantizeLinear" and q is not None and q.dtype == np.int8 and q.ndim >= 2:
                shape = [1] * q.ndim
                shape[next((a.i for a in n.attribute if a.name == "axis"), 1)] = -1
                w = floats[n.input[0].removesuffix("_quantized")]
                errors.append(np.abs(q * ints[n.input[1]].reshape(shape) - w).max() / np.abs(w).max())
        assert len(errors) == 5  # every conv and the dense layer (the logits layer stays float)
        return float(max(errors))

    assert weight_error(ready / runs.BEST) < 1e-6
    assert weight_error(run / runs.BEST) > 1e-3  # an ordinary member's kernels are rounded


def test_the_derived_run_folder(tmp_path: Path, faces) -> None:
    from fer_train.inference import load_model

    run = _run_folder(tmp_path, _model_with_statistics())
    res = CliRunner().invoke(app, ["int8-grid", str(run), "--out", str(tmp_path / "deep" / "ready")])
    assert res.exit_code == 0, res.output
    ready = tmp_path / "deep" / "ready"
    assert sorted(p.name for p in ready.iterdir()) == [runs.BEST, runs.CONFIG]
    conf, model_cfg, train_cfg = read_run_config(ready)
    assert not model_cfg.batch_norm and model_cfg.filters == CFG.filters
    assert Path(train_cfg.data).resolve() == FIX.resolve()  # paths re-based on the new folder
    assert (ready / conf["data"]["path"]).resolve() == FIX.resolve()
    assert (ready / conf["derived"]["from"]).resolve() == (run / runs.BEST).resolve()
    model = load_model(ready / runs.BEST)
    assert np.allclose(model.get_layer("b1c1_conv").get_weights()[0],
                       on_grid(model.get_layer("b1c1_conv").get_weights()[0]))

    again = CliRunner().invoke(app, ["int8-grid", str(run), "--out", str(ready)])
    assert again.exit_code == 2 and "already exists" in again.output
    ens = tmp_path / "ens"
    assert CliRunner().invoke(app, ["ensemble", str(run), "--out", str(ens)]).exit_code == 0
    res = CliRunner().invoke(app, ["int8-grid", str(ens), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "is an ensemble; pass one of its members" in res.output
    loose = tmp_path / "loose.keras"
    (run / runs.BEST).rename(loose)
    res = CliRunner().invoke(app, ["int8-grid", str(loose), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not inside a fer-train run folder" in res.output
    assert not (tmp_path / "x").exists()
    json.loads((ready / runs.CONFIG).read_text())  # still whole


def test_fake_quant_rounds_to_256_levels_of_the_batch_range_and_passes_gradients_straight_through() -> None:
    import tensorflow as tf

    from fer_train.fake_quant import FakeQuantInt8

    layer = FakeQuantInt8()
    x = tf.constant(np.random.default_rng(2).uniform(-1.0, 3.0, (4, 5, 5, 3)).astype(np.float32))
    weights = np.arange(1.0, 301.0, dtype=np.float32).reshape(4, 5, 5, 3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * weights)
    step = (float(tf.reduce_max(x)) - float(tf.reduce_min(x))) / 255
    zero = np.round(-float(tf.reduce_min(x)) / step)
    levels = y.numpy() / step + zero
    np.testing.assert_allclose(levels, np.round(levels), atol=2e-3)  # on the grid
    assert levels.min() >= -1e-3 and levels.max() <= 255 + 1e-3 and len(np.unique(np.round(levels))) > 100
    assert 0 < np.abs(y.numpy() - x.numpy()).max() <= step / 2 + 1e-6  # rounded, to the nearest level
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(grad, weights, rtol=1e-6)  # the identity's gradient
    relu = layer(tf.constant([[0.0, 0.5, 2.0]]), training=True)  # a ReLU output: the range starts at 0, so 0 stays exact
    assert float(relu[0, 0]) == 0.0 and float(relu[0, 2]) == pytest.approx(2.0)
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())  # inference: the float network, whatever the batch


def test_a_quantization_aware_run_is_trained_with_rounding_and_int8_grid_drops_it(tmp_path: Path, monkeypatch) -> None:
    """fit --init RUN --act-quant adds the rounding layers, in float32; the int8-grid copy is an ordinary, exportable
    member; --no-act-quant takes them away again."""
    import keras

    from fer_export.errors import ExportError
    from fer_export.twin import check_model
    from fer_train.fake_quant import FakeQuantInt8
    from fer_train.inference import load_model

    run = _run_folder(tmp_path, _model_with_statistics())
    ready = make_int8_ready(run, tmp_path / "ready")
    qat = tmp_path / "qat"
    r = CliRunner().invoke(app, ["fit", "--data", str(FIX), "--out", str(qat), "--init", str(ready), "--act-quant",
                                 "--epochs", "1", "--lr", "1e-4", "--schedule", "constant", "--warmup-epochs", "0",
                                 "--limit-train", "64", "--no-augment"])
    assert r.exit_code == 0, r.output
    conf, cfg, _ = read_run_config(qat)
    assert cfg.act_quant and not cfg.batch_norm and conf["precision"] == "float32"  # auto, whatever the CPU
    model = load_model(qat / runs.BEST)
    rounding = [l.name for l in model.layers if isinstance(l, FakeQuantInt8)]
    assert rounding == ["b1c1_fq", "b1c2_fq", "b2c1_fq", "b2c2_fq", "dense1_fq"]
    with pytest.raises(ExportError, match="b1c1_fq.* rounds activations .* export the run's `fer-train int8-grid"):
        check_model(model)

    final = make_int8_ready(qat, tmp_path / "final")
    _, final_cfg, _ = read_run_config(final)
    clean = load_model(final / runs.BEST)
    assert not final_cfg.act_quant and not any(isinstance(l, FakeQuantInt8) for l in clean.layers)
    check_model(clean)
    for name in ("b1c1_conv", "dense1", "logits"):  # the fine-tuned weights, the kernels on the grid
        w, src = clean.get_layer(name).get_weights(), model.get_layer(name).get_weights()
        np.testing.assert_array_equal(w[1], src[1])
        np.testing.assert_array_equal(w[0], src[0] if name == "logits" else on_grid(src[0]))
    assert isinstance(clean.get_layer("b1c1_relu"), keras.layers.ReLU)

    import fer_train.precision

    args = ["fit", "--data", str(FIX), "--init", str(qat), "--epochs", "1", "--limit-train", "64", "--no-augment"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain"), "--no-act-quant"])
    assert r.exit_code == 0, r.output
    assert not read_run_config(tmp_path / "plain")[1].act_quant
    monkeypatch.setattr(fer_train.precision, "resolve", lambda *a, **k: ("bfloat16", "asked for"))
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bf16"), "--precision", "bfloat16"])
    assert r.exit_code == 2 and "--act-quant trains in float32" in r.output and not (tmp_path / "bf16").exists()
