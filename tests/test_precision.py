"""--precision: what auto picks, what is recorded, and a bf16 run resumed on a machine without bf16."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fer_train.precision import cpu_bf16_flags, resolve

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"


@pytest.mark.parametrize("requested, gpu, flags, expected", [
    ("auto", False, ["amx_bf16", "avx512_bf16"], "bfloat16"),
    ("auto", False, ["avx512_bf16"], "bfloat16"),
    ("auto", False, [], "float32"),
    ("auto", True, [], "mixed_float16"),
    ("auto", True, ["avx512_bf16"], "mixed_float16"),
    ("float32", False, ["amx_bf16"], "float32"),
    ("bfloat16", False, [], "float32"),  # no bf16 hardware: falls back, and says so
    ("bfloat16", False, ["amx_bf16"], "bfloat16"),
    ("mixed_float16", False, ["amx_bf16"], "float32"),
    ("mixed_float16", True, [], "mixed_float16"),
])
def test_resolve(requested, gpu, flags, expected):
    got, why = resolve(requested, gpu=gpu, bf16_flags=flags)
    assert got == expected
    if got != requested and requested != "auto":
        assert "continuing in float32" in why


def test_resolve_refuses_unknown():
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve("half", gpu=False, bf16_flags=[])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_flags(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(info) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def _on_a_bf16_machine(monkeypatch):
    """(tiny model config, 2-epoch training config) with fer-train seeing a bf16 CPU and no GPU."""
    from fer_train import precision
    from fer_train.fit import TrainConfig
    from fer_train.models import ModelConfig
    from fer_train.pipeline import AugmentConfig

    monkeypatch.setattr(precision, "has_cuda_gpu", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    cfg = TrainConfig(data=str(FIX), epochs=2, batch_size=32, schedule="constant", warmup_epochs=0,
                      augment=AugmentConfig(enabled=False))
    return ModelConfig(filters=4, blocks=1, convs_per_block=1, units=8, conv_dropout=0, dense_dropout=0), cfg


@pytest.mark.tf
def test_bf16_run_is_recorded_and_resumes_in_float32_elsewhere(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    import keras

    from fer_train import precision, runs
    from fer_train.fit import fit

    run = tmp_path / "run"
    tiny, cfg = _on_a_bf16_machine(monkeypatch)
    logs: list[str] = []

    def stop_in_epoch_2(epoch, step, steps):
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            fit(run, tiny, cfg, log=logs.append, progress=stop_in_epoch_2)
        assert json.loads((run / runs.CONFIG).read_text())["precision"] == "bfloat16"
        assert [r["precision"] for r in runs.read_history(run)] == ["bfloat16"]
        saved = keras.models.load_model(run / runs.LAST, compile=False)
        assert saved.get_layer("b1c1_conv").compute_dtype == "bfloat16"
        assert saved.get_layer("logits").compute_dtype == "float32"  # logits and softmax stay float32
        assert saved(np.zeros((1, 48, 48, 1), "float32")).dtype == "float32"

        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])  # resumed on a machine without bf16
        logs.clear()
        fit(run, resume=True, log=logs.append)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert any("trained in bfloat16 so far; continuing in float32" in line for line in logs), logs
    assert [r["precision"] for r in runs.read_history(run)] == ["bfloat16", "float32"]
    conf = json.loads((run / runs.CONFIG).read_text())
    assert conf["precision"] == "float32"
    from fer_runtime.machine import cpu_model

    # where each part ran: the start in "environment", the resume from epoch 2 in "resumed"
    assert [(r["from_epoch"], r["precision"], r["cpu"]) for r in conf["resumed"]] == [(2, "float32", cpu_model())]
    assert "resumed" not in conf["environment"] and conf["environment"]["cpu"] == cpu_model()
    resumed = keras.models.load_model(run / runs.LAST, compile=False)
    assert resumed.get_layer("b1c1_conv").compute_dtype == "float32"
    steps = -(-json.loads((run / runs.CONFIG).read_text())["data"]["train_rows"] // 32)
    assert int(keras.models.load_model(run / runs.LAST).optimizer.iterations) == 2 * steps  # optimizer state carried over


@pytest.mark.tf
def test_a_gpu_run_resumed_on_a_cpu_says_its_optimizer_state_starts_afresh(tmp_path, monkeypatch):
    """mixed_float16 wraps the optimizer in a loss scaler; Keras skips loading its state elsewhere with a warning."""
    pytest.importorskip("tensorflow")
    import keras

    from fer_train import precision, runs
    from fer_train.fit import fit

    run = tmp_path / "run"
    tiny, cfg = _on_a_bf16_machine(monkeypatch)
    monkeypatch.setattr(precision, "has_cuda_gpu", lambda: True)  # started on a "GPU" (float16 runs on CPU too)
    logs: list[str] = []
    try:
        fit(run, tiny, replace(cfg, epochs=1), log=logs.append)
        assert json.loads((run / runs.CONFIG).read_text())["precision"] == "mixed_float16"
        for gpu, said in ((True, False), (False, True)):  # the same precision carries it; float32 does not
            monkeypatch.setattr(precision, "has_cuda_gpu", lambda: gpu)
            monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
            conf = json.loads((run / runs.CONFIG).read_text())
            conf["train"]["epochs"] += 1
            (run / runs.CONFIG).write_text(json.dumps(conf))
            logs.clear()
            fit(run, resume=True, log=logs.append)
            assert any("optimizer state does not fit" in line for line in logs) == said, logs
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.tf
def test_a_fresh_optimizer_state_keeps_the_plateau_learning_rate(tmp_path, monkeypatch):
    """A plateau schedule's reduced rate is kept only in the optimizer state: when that state cannot be loaded,
    the run continues at the rate history.csv recorded, not at --lr."""
    pytest.importorskip("tensorflow")
    import keras

    from fer_train import precision, runs
    from fer_train.fit import fit

    run = tmp_path / "run"
    tiny, cfg = _on_a_bf16_machine(monkeypatch)
    monkeypatch.setattr(precision, "has_cuda_gpu", lambda: True)  # mixed_float16: another optimizer state
    try:
        fit(run, tiny, replace(cfg, epochs=1, schedule="plateau", warmup_epochs=0), log=lambda s: None)
        hist = (run / runs.HISTORY).read_text().splitlines()
        lr_col = hist[0].split(",").index("lr")
        cells = hist[1].split(",")
        assert float(cells[lr_col]) == pytest.approx(cfg.lr)
        cells[lr_col] = "0.0003"  # as if ReduceLROnPlateau had lowered it
        (run / runs.HISTORY).write_text("\n".join([hist[0], ",".join(cells)]) + "\n")
        monkeypatch.setattr(precision, "has_cuda_gpu", lambda: False)
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
        conf = json.loads((run / runs.CONFIG).read_text())
        conf["train"]["epochs"] = 2
        (run / runs.CONFIG).write_text(json.dumps(conf))
        fit(run, resume=True, log=lambda s: None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert runs.read_history(run)[1]["lr"] == pytest.approx(0.0003)


@pytest.mark.tf
def test_a_bf16_run_is_validated_in_float32(tmp_path, monkeypatch):
    """history's val_loss and val_accuracy (which choose best.keras) are those of the float32 model that is exported,
    not of the bf16 one that trains."""
    pytest.importorskip("tensorflow")
    import keras

    from fer_train import runs
    from fer_train.data import load_source
    from fer_train.fit import fit
    from fer_train.inference import load_model

    run = tmp_path / "run"
    tiny, cfg = _on_a_bf16_machine(monkeypatch)
    try:
        fit(run, tiny, cfg, log=lambda s: None)
        bf16 = keras.models.load_model(run / runs.LAST, compile=False)  # as it trained
        assert bf16.get_layer("b1c1_conv").compute_dtype == "bfloat16"
        val = load_source(FIX)["val"]

        def loss_and_accuracy(model):
            p = np.asarray(model.predict(val.x, verbose=0), np.float64)
            return float(-np.log(np.clip(p[np.arange(len(val.y)), val.y], 1e-7, 1)).mean()), float((p.argmax(1) == val.y).mean())

        bf16_loss, _ = loss_and_accuracy(bf16)
        f32_loss, f32_acc = loss_and_accuracy(load_model(run / runs.LAST))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    row = runs.read_history(run)[-1]
    assert row["precision"] == "bfloat16" and row["val_precision"] == "float32"
    assert abs(bf16_loss - f32_loss) > 1e-4  # the two precisions differ measurably here
    assert row["val_loss"] == pytest.approx(f32_loss, rel=1e-5) and row["val_accuracy"] == pytest.approx(f32_acc)
