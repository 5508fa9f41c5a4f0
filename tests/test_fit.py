"""Fitting on real fixture rows: the loss falls, runs resume after interruption, the CLI works."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

from typer.testing import CliRunner  # noqa: E402

from fer_train import runs  # noqa: E402
from fer_train.cli import app  # noqa: E402
from fer_train.fit import TrainConfig, fit, lr_at  # noqa: E402
from fer_train.models import ModelConfig  # noqa: E402
from fer_train.pipeline import AugmentConfig  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
TINY = ModelConfig(filters=8, blocks=2, convs_per_block=1, units=32, conv_dropout=0.0, dense_dropout=0.0)


def _cfg(**kw) -> TrainConfig:
    base = dict(data=str(FIX), epochs=3, batch_size=32, lr=2e-3, schedule="constant", warmup_epochs=0,
                augment=AugmentConfig(enabled=False))
    base.update(kw)
    return TrainConfig(**base)


def test_short_fit_lowers_loss_and_writes_run(tmp_path):
    res = fit(tmp_path / "run", TINY, _cfg(epochs=5), log=lambda s: None)
    h = runs.read_history(tmp_path / "run")
    assert [int(r["epoch"]) for r in h] == [1, 2, 3, 4, 5]
    assert h[-1]["loss"] < 0.8 * h[0]["loss"]
    assert h[-1]["accuracy"] > h[0]["accuracy"]
    for name in (runs.CONFIG, runs.HISTORY, runs.BEST, runs.LAST, runs.CURVES, runs.SUMMARY):
        assert (tmp_path / "run" / name).exists(), name
    be, bv = runs.best_epoch(h)
    assert res["best_epoch"] == be and res["best_val_accuracy"] == pytest.approx(bv)
    assert "Total params" in (tmp_path / "run" / runs.SUMMARY).read_text()
    conf = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert conf["data"]["validation"] == "PublicTest" and conf["model"]["filters"] == 8


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    import keras

    from fer_train.data import load_source
    from fer_train.evaluate import predict_probs

    run = tmp_path / "run"
    fit(run, TINY, _cfg(epochs=4), log=lambda s: None)
    be, bv = runs.best_epoch(runs.read_history(run))
    val = load_source(FIX)["val"]
    acc = (predict_probs([keras.models.load_model(run / runs.BEST, compile=False)], val.x).argmax(1) == val.y).mean()
    assert acc == pytest.approx(bv, abs=1e-6)


def test_resume_after_interrupt_mid_epoch(tmp_path):
    run = tmp_path / "run"

    def boom(epoch, step, steps):
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(run, TINY, _cfg(epochs=4), log=lambda s: None, progress=boom)
    assert len(runs.read_history(run)) == 2
    res = fit(run, resume=True, log=lambda s: None)
    h = runs.read_history(run)
    assert [int(r["epoch"]) for r in h] == [1, 2, 3, 4] and res["epochs_done"] == 4


def test_resume_after_sigkill(tmp_path):
    """A real kill -9 of the CLI mid-run, then --resume finishes at the requested epoch count."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fer_train.cli", "fit", "--data", str(FIX), "--out", str(run), "--filters", "8",
           "--blocks", "2", "--convs-per-block", "1", "--units", "16", "--epochs", "40", "--batch-size", "8",
           "--no-augment", "--patience", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded machine is slow to import TF and fit
    while time.time() < deadline and len(runs.read_history(run)) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(runs.read_history(run))
    assert 2 <= done < 40
    conf = json.loads((run / runs.CONFIG).read_text())
    conf["train"]["epochs"] = done + 1  # keep the test short: finish one more epoch
    (run / runs.CONFIG).write_text(json.dumps(conf))
    r = CliRunner().invoke(app, ["fit", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    h = runs.read_history(run)
    assert [int(x["epoch"]) for x in h] == list(range(1, done + 2))


def test_resume_with_moved_data(tmp_path):
    """A run resumed where its data lives elsewhere: --data says where, the row counts must match, config follows."""
    import gzip
    import shutil

    first = tmp_path / "a" / "fer.csv.gz"
    first.parent.mkdir()
    shutil.copy(FIX, first)
    run = tmp_path / "run"

    def stop(epoch, step, steps):
        if epoch == 1 and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(run, TINY, _cfg(data=str(first), epochs=3), log=lambda s: None, progress=stop)
    moved = tmp_path / "b" / "fer.csv.gz"
    moved.parent.mkdir()
    shutil.move(first, moved)
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--resume", str(run)])
    assert r.exit_code == 1 and "fer.csv.gz: file not found" in r.output
    lines = gzip.open(moved, "rt").read().splitlines()
    short = tmp_path / "short.csv"
    training = [ln for ln in lines[1:] if ln.endswith("Training")]
    others = [ln for ln in lines[1:] if not ln.endswith("Training")]
    short.write_text("\n".join([lines[0], *training[5:], *others]) + "\n")  # 5 training rows fewer
    r = runner.invoke(app, ["fit", "--resume", str(run), "--data", str(short)])
    assert r.exit_code == 1 and "pass the same data with --data" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert len(runs.read_history(run)) == 1
    r = runner.invoke(app, ["fit", "--resume", str(run), "--data", str(moved)])
    assert r.exit_code == 0, r.output
    assert [int(x["epoch"]) for x in runs.read_history(run)] == [1, 2, 3]
    conf = json.loads((run / runs.CONFIG).read_text())
    assert conf["train"]["data"] == conf["data"]["path"] == str(moved)


def test_lr_schedules():
    c = _cfg(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=1)
    lrs = [lr_at(c, e) for e in range(10)]
    assert lrs[0] < lrs[1] == pytest.approx(1.0) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    s = _cfg(epochs=9, lr=1.0, schedule="step", warmup_epochs=0)
    assert [lr_at(s, e) for e in (0, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])


def test_augmentation_changes_images_but_not_labels():
    from fer_train.data import load_source
    from fer_train.pipeline import make_dataset

    tr = load_source(FIX)["train"]
    ds = make_dataset(tr.x[:16], tr.y[:16], 16, training=True, augment=AugmentConfig(), seed=1)
    xb, yb = next(iter(ds))
    assert xb.shape == (16, 48, 48, 1)
    assert not np.allclose(xb.numpy(), tr.x[:16].astype("float32"))
    assert sorted(np.argmax(yb.numpy(), 1).tolist()) == sorted(tr.y[:16].tolist())


def test_cli_fit_evaluate_ensemble_predict(tmp_path):
    runner = CliRunner()
    common = ["--data", str(FIX), "--filters", "4", "--blocks", "2", "--convs-per-block", "1", "--units", "8",
              "--epochs", "1", "--batch-size", "32", "--no-augment"]
    for name in ("a", "b"):
        r = runner.invoke(app, ["fit", "--out", str(tmp_path / name), *common])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "a"), "--split", "PrivateTest", "--tta", "flip"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["PrivateTest+flip"]
    assert m["n"] == 70 and 0 <= m["accuracy"] <= 1 and len(m["confusion"]) == 7
    assert sum(map(sum, m["confusion"])) == 70
    assert (tmp_path / "a" / "confusion_PrivateTest_flip.png").stat().st_size > 10_000
    r = runner.invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    assert runs.member_models(tmp_path / "ens") == [(tmp_path / n / "best.keras") for n in ("a", "b")] or \
        [p.resolve() for p in runs.member_models(tmp_path / "ens")] == [(tmp_path / n / "best.keras").resolve() for n in "ab"]
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    # a course test.csv -> Kaggle submission
    rows = [line.split(",") for line in __import__("gzip").decompress(FIX.read_bytes()).decode().splitlines()[1:6]]
    test = tmp_path / "test.csv"
    test.write_text("id,feature\n" + "".join(f"{i + 100},{px}\n" for i, (_, px, _) in enumerate(rows)))
    r = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(test), "--out", str(tmp_path / "sub.csv")])
    assert r.exit_code == 0, r.output
    sub = list(csv.DictReader((tmp_path / "sub.csv").open()))
    assert [int(s["id"]) for s in sub] == [100, 101, 102, 103, 104] and all(0 <= int(s["label"]) < 7 for s in sub)


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "missing.csv: file not found" in r.output
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "r"), "--cnn-activation", "tanh"])
    assert r.exit_code == 1 and "unknown activation 'tanh'" in r.output
    r = runner.invoke(app, ["fit", "--resume", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "not found" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no such run" in r.output


def test_dnn_match_params_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "cnn"), "--filters", "8", "--blocks", "2",
                            "--units", "64", "--epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "dnn"), "--arch", "dnn",
                            "--match-params", str(tmp_path / "cnn"), "--epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    a = json.loads(r.output.strip().splitlines()[-1])["params"]
    b = json.loads(runner.invoke(app, ["fit", "--resume", str(tmp_path / "cnn")]).output.strip().splitlines()[-1])["params"]
    assert abs(a - b) / b < 0.05


def test_self_train_on_hidden_labels(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "teacher"), "--filters", "4",
                            "--blocks", "2", "--units", "16", "--epochs", "2", "--no-augment", "--hide-labels", "0.25"])
    assert r.exit_code == 0, r.output
    conf = json.loads((tmp_path / "teacher" / runs.CONFIG).read_text())
    assert conf["data"]["train_rows"] == 210
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "st"),
                            "--threshold", "0.0", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "st" / "self_training.json").read_text())
    assert info["unlabelled"] == 70 and info["pseudo_labelled"] == 70
    assert json.loads((tmp_path / "st" / "student" / runs.CONFIG).read_text())["data"]["train_rows"] == 210
    assert 0 <= info["student_accuracy"] <= 1 and info["split"] == "PublicTest"
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "st" / "student"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 0  # student also hid labels, so it can teach again


@pytest.mark.parametrize("opts", [dict(strategy="mirrored"), dict(mixed_precision=True)])
def test_strategy_and_mixed_precision_run_on_cpu(tmp_path, opts):
    import keras

    try:
        res = fit(tmp_path / "run", TINY, _cfg(epochs=1, **opts), log=lambda s: None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert res["epochs_done"] == 1
    m = keras.models.load_model(tmp_path / "run" / runs.BEST, compile=False)
    p = np.asarray(m(np.zeros((2, 48, 48, 1), "float32")))
    assert p.dtype == np.float32 and np.allclose(p.sum(1), 1, atol=1e-3)
