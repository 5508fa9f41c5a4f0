"""Fitting on real fixture rows: the loss falls, runs resume after interruption, the CLI works."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

from typer.testing import CliRunner  # noqa: E402

from fer_train import runs  # noqa: E402
from fer_train.cli import app  # noqa: E402
from fer_train.fit import fit, lr_at  # noqa: E402
from fer_train.pipeline import AugmentConfig  # noqa: E402

from tiny_runs import FIX, TINY  # noqa: E402  (tests/tiny_runs.py)
from tiny_runs import tiny_train_config as _cfg  # noqa: E402


def test_short_fit_lowers_loss_and_writes_run(tmp_path):
    res = fit(tmp_path / "run", TINY, _cfg(epochs=5), log=lambda s: None)
    h = runs.read_history(tmp_path / "run")
    assert [int(r["epoch"]) for r in h] == [1, 2, 3, 4, 5]
    assert h[-1]["loss"] < 0.8 * h[0]["loss"]
    assert h[-1]["accuracy"] > h[0]["accuracy"]
    for name in (runs.CONFIG, runs.HISTORY, runs.BEST, runs.LAST, runs.CURVES, runs.SUMMARY):
        assert (tmp_path / "run" / name).exists(), name
    val = [r["val_accuracy"] for r in h]
    assert res["best_epoch"] == val.index(max(val)) + 1 and res["best_val_accuracy"] == pytest.approx(max(val), abs=1e-6)
    assert "Total params" in (tmp_path / "run" / runs.SUMMARY).read_text()
    conf = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert conf["data"]["validation"] == "PublicTest" and conf["model"]["filters"] == 8
    from fer_runtime.machine import cpu_model

    assert conf["environment"]["cpu"] == cpu_model() != ""  # which machine the run started on


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    """On any machine (a bf16 one trains in bfloat16): history's best is what best.keras scores in float32."""
    from fer_train.data import load_source
    from fer_train.inference import load_model, predict_probs

    run = tmp_path / "run"
    fit(run, TINY, _cfg(epochs=4), log=lambda s: None)
    be, bv = runs.best_epoch(runs.read_history(run))
    val = load_source(FIX)["val"]
    acc = (predict_probs([load_model(run / runs.BEST)], val.x).argmax(1) == val.y).mean()
    assert acc == pytest.approx(bv, abs=1e-6)


def test_best_checkpoint_follows_its_history_row_and_resume_mends_a_kill_between(tmp_path, monkeypatch):
    """best.keras is written after the epoch's history row: a kill before the row leaves them agreeing, and a kill
    between the row and best.keras is mended by --resume (the last epoch is the best: its weights are last.keras)."""
    import keras

    run = tmp_path / "run"
    on_disk: list[tuple[int, int]] = []  # at each best.keras save: (history rows on disk, their best epoch)
    save = runs.save_keras

    def spy(m, path, **kw):
        if path.name == runs.BEST:
            h = runs.read_history(run)
            on_disk.append((len(h), runs.best_epoch(h)[0]))
        save(m, path, **kw)

    monkeypatch.setattr(runs, "save_keras", spy)
    fit(run, TINY, _cfg(epochs=3), log=lambda s: None)
    monkeypatch.undo()
    assert on_disk and all(rows >= 1 and best == rows for rows, best in on_disk), on_disk

    # As if killed after epoch 3's row (made the best) but before its best.keras: best.keras is an older epoch's.
    h = runs.read_history(run)
    h[-1]["val_accuracy"] = 0.99
    runs.write_history(run, h)
    conf = json.loads((run / runs.CONFIG).read_text())
    conf["train"]["epochs"] = 4
    (run / runs.CONFIG).write_text(json.dumps(conf))
    epoch3 = keras.models.load_model(run / runs.LAST, compile=False).get_weights()
    older = keras.models.load_model(run / runs.BEST, compile=False)
    older.set_weights([w + 1 for w in epoch3])  # surely not epoch 3's weights
    runs.save_keras(older, run / runs.BEST, include_optimizer=False)
    fit(run, resume=True, log=lambda s: None)
    assert runs.best_epoch(runs.read_history(run))[0] == 3
    best = keras.models.load_model(run / runs.BEST, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(best, epoch3))


def test_resume_after_a_kill_between_last_keras_and_its_history_row_trains_no_epoch_twice(tmp_path, monkeypatch):
    """A kill after last.keras is saved but before the epoch's history row: --resume rebuilds the row from a
    validation pass instead of training that epoch again on top of itself. Trained on a bf16 machine, resumed on
    one without: the rebuilt row keeps the precision its epoch was trained in."""
    import keras

    from fer_train import precision

    run = tmp_path / "run"
    monkeypatch.setattr(precision, "has_cuda_gpu", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    try:
        fit(run, TINY, _cfg(epochs=3), log=lambda s: None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    full = runs.read_history(run)
    runs.write_history(run, full[:2])  # as if killed just before epoch 3's row; last.keras holds epoch 3
    epoch3 = keras.models.load_model(run / runs.LAST)
    steps = int(epoch3.optimizer.iterations.numpy()) // 3
    lines: list[str] = []
    res = fit(run, resume=True, log=lines.append)  # 3 of 3 epochs: nothing left to train
    h = runs.read_history(run)
    assert [int(r["epoch"]) for r in h] == [1, 2, 3] and res["epochs_done"] == 3
    assert np.isnan(h[2]["loss"]) and h[2]["val_accuracy"] == pytest.approx(full[2]["val_accuracy"], abs=1e-6)
    assert [r["precision"] for r in h] == ["bfloat16"] * 3 and h[2]["val_precision"] == "float32"
    assert any("epoch 3 was saved but not recorded" in m for m in lines), lines
    after = keras.models.load_model(run / runs.LAST)
    assert steps > 0 and int(after.optimizer.iterations.numpy()) == 3 * steps  # not trained a fourth time
    if runs.best_epoch(h)[0] == 3:
        best = keras.models.load_model(run / runs.BEST, compile=False).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(best, epoch3.get_weights()))


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


def test_resume_from_a_damaged_checkpoint_is_one_line_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    fit(run, TINY, _cfg(epochs=1), log=lambda s: None)
    conf = json.loads((run / runs.CONFIG).read_text())
    conf["train"]["epochs"] = 2  # one more epoch to train
    (run / runs.CONFIG).write_text(json.dumps(conf))
    whole_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(whole_zip, "w") as z:  # a whole zip archive, but no model in it
        z.writestr("readme.txt", "hello")
    for damaged, message in [(b"PK\x03\x04 cut short", "last.keras: not a Keras model file"),  # a zip header only
                             (whole_zip.read_bytes(), "last.keras: cannot load its weights")]:
        (run / runs.LAST).write_bytes(damaged)
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        r = CliRunner().invoke(app, ["fit", "--resume", str(run)])
        lines = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert len(lines) == 1 and message in lines[0], r.output
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_of_an_early_stopped_run_trains_no_more(tmp_path):
    """A run whose last ``patience`` epochs brought no gain has ended: --resume must not add an epoch."""
    run = tmp_path / "run"
    fit(run, TINY, _cfg(epochs=2), log=lambda s: None)
    conf = json.loads((run / runs.CONFIG).read_text())
    conf["train"].update(epochs=4, patience=1)  # as if it had stopped early at epoch 2 of 4
    (run / runs.CONFIG).write_text(json.dumps(conf))
    h = runs.read_history(run)
    h[0]["val_accuracy"], h[1]["val_accuracy"] = 0.9, 0.1
    runs.write_history(run, h)
    lines: list[str] = []
    res = fit(run, resume=True, log=lines.append)
    assert len(runs.read_history(run)) == 2 and res["epochs_done"] == 2
    assert any("stopped early after 2/4 epochs" in m for m in lines)


def test_resume_after_sigkill_gives_the_uninterrupted_history(tmp_path):
    """A real kill -9 of the CLI mid-run, then --resume: the same epochs and, to float noise, the same losses and
    accuracies as a run that was never interrupted.

    Resume restores weights and optimizer state from last.keras, and each epoch's shuffle order is a function of
    (seed, epoch) alone (fer_train.pipeline.make_dataset), so the resumed epochs see the same batches. Dropout and
    augmentation draws are not in the checkpoint, so both are off here. Tolerance: relative 1e-3. Multithreaded
    float32 reductions move the 5th-6th digit at most; a resume that saw other batches (the shuffle seeded per
    restart, as before) moved epoch 3's loss by 3% (1.0502 against 1.0791), thirty times the tolerance.
    """
    epochs = 6
    args = ["fit", "--data", str(FIX), "--filters", "8", "--blocks", "2", "--convs-per-block", "1", "--units", "16",
            "--conv-dropout", "0", "--dense-dropout", "0", "--epochs", str(epochs), "--batch-size", "16",
            "--limit-train", "400", "--no-augment", "--patience", "100"]
    ref, run = tmp_path / "reference", tmp_path / "run"
    r = CliRunner().invoke(app, [*args, "--out", str(ref)])
    assert r.exit_code == 0, r.output
    proc = subprocess.Popen([sys.executable, "-m", "fer_train.cli", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded machine is slow to import TF and fit
    while time.time() < deadline and proc.poll() is None and len(runs.read_history(run)) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(runs.read_history(run))
    assert 2 <= done < epochs, f"killed after {done} epochs: not mid-run"
    r = CliRunner().invoke(app, ["fit", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    got, want = runs.read_history(run), runs.read_history(ref)
    assert [int(x["epoch"]) for x in got] == [int(x["epoch"]) for x in want] == list(range(1, epochs + 1))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([x[key] for x in got], [x[key] for x in want], rtol=1e-3, err_msg=key)


def test_resume_with_moved_data(tmp_path, monkeypatch):
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
    assert r.exit_code == 2 and "its data is not at" in r.output and "pass --data PATH" in r.output, r.output
    assert "fer.csv.gz" in r.output and len(r.output.strip().splitlines()) == 1
    lines = gzip.open(moved, "rt").read().splitlines()
    short = tmp_path / "short.csv"
    training = [ln for ln in lines[1:] if ln.endswith("Training")]
    others = [ln for ln in lines[1:] if not ln.endswith("Training")]
    short.write_text("\n".join([lines[0], *training[5:], *others]) + "\n")  # 5 training rows fewer
    r = runner.invoke(app, ["fit", "--resume", str(run), "--data", str(short)])
    assert r.exit_code == 2 and "pass the same data with --data" in r.output
    assert len(r.output.strip().splitlines()) == 1
    relabelled = tmp_path / "relabelled.csv"  # the same row counts, one label changed
    e, rest = training[0].split(",", 1)
    relabelled.write_text("\n".join([lines[0], f"{(int(e) + 1) % 7},{rest}", *training[1:], *others]) + "\n")
    r = runner.invoke(app, ["fit", "--resume", str(run), "--data", str(relabelled)])
    assert r.exit_code == 2 and "not the file the run started on" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert len(runs.read_history(run)) == 1
    import fer_train.config
    import fer_train.fit

    hashed, real = [], fer_train.config.sha256_file
    for module in (fer_train.config, fer_train.fit):
        monkeypatch.setattr(module, "sha256_file", lambda p: hashed.append(p) or real(p))
    r = runner.invoke(app, ["fit", "--resume", str(run), "--data", str(moved)])
    assert r.exit_code == 0, r.output
    assert [int(x["epoch"]) for x in runs.read_history(run)] == [1, 2, 3]
    conf = json.loads((run / runs.CONFIG).read_text())
    assert len(hashed) == 1 and conf["data"]["sha256"] == real(moved)  # checked once, then recorded
    assert conf["train"]["data"] == conf["data"]["path"] == os.path.relpath(moved, run)  # stored relative to the run


def test_lr_schedules():
    c = _cfg(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=1)
    lrs = [lr_at(c, e) for e in range(10)]
    assert lrs[0] < lrs[1] == pytest.approx(1.0) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    s = _cfg(epochs=9, lr=1.0, schedule="step", warmup_epochs=0)
    assert [lr_at(s, e) for e in (0, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])


def test_cyclic_cosine_restarts_each_cycle():
    from fer_train.schedules import cycle_ends

    c = _cfg(epochs=7, lr=1.0, schedule="cosine", warmup_epochs=1, cycles=3)
    c.validate()
    lrs = [lr_at(c, e) for e in range(7)]
    assert lrs[0] == pytest.approx(0.5)  # warm-up
    assert lrs[1] == lrs[3] == lrs[5] == pytest.approx(1.0)  # each cycle starts at the full rate
    assert lrs[2] == lrs[4] == lrs[6] == pytest.approx(0.505)  # and ends half-way down a 2-epoch cosine
    assert cycle_ends(7, 1, 3) == [3, 5, 7] and cycle_ends(7, 1, 1) == []
    with pytest.raises(ValueError, match="do not split into 4 equal cycles"):
        _cfg(epochs=7, schedule="cosine", warmup_epochs=1, cycles=4).validate()
    with pytest.raises(ValueError, match="leave fewer than 2 epochs for 2 cycles"):  # 0 % 2 == 0: no cycle ever ended
        _cfg(epochs=10, schedule="cosine", warmup_epochs=10, cycles=2).validate()
    with pytest.raises(ValueError, match="needs --schedule cosine"):
        _cfg(epochs=7, schedule="step", warmup_epochs=1, cycles=3).validate()


@pytest.mark.parametrize("setting, flag", [
    (dict(lr=-1e-3), "--lr"), (dict(weight_decay=-1e-4), "--weight-decay"), (dict(patience=0), "--patience"),
    (dict(label_smoothing=1.5), "--label-smoothing"), (dict(hide_labels=1.0), "--hide-labels"),
    (dict(limit_train=-5), "--limit-train"), (dict(distill_temperature=0.0), "--distill-temperature"),
    (dict(warmup_epochs=-1), "--warmup-epochs"), (dict(random_seed=-1), "--random-seed"),
    (dict(split_seed=2**32), "--split-seed")])
def test_out_of_range_settings_are_refused_by_name(setting, flag):
    with pytest.raises(ValueError, match=f"^{flag} must be"):
        _cfg(**setting).validate()


def test_config_with_an_unknown_setting_is_refused_by_name():
    from fer_train.config import TrainConfig

    d = _cfg().to_dict()
    assert TrainConfig.from_dict(d) == _cfg()
    with pytest.raises(ValueError, match="unknown training settings ema, gradient_clip"):
        TrainConfig.from_dict({**d, "ema": 0.999, "gradient_clip": 1.0})


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].update(depth_mult=2), "unknown model settings depth_mult"),  # was silently dropped
    (lambda c: c["train"]["augment"].update(rotate=5), "unknown augmentation settings rotate"),  # was a TypeError
    (lambda c: c.pop("model"), "no 'model' section"),  # was "error: model"
    (lambda c: c.update(train=5), "the training settings must be a JSON object"),
    (lambda c: c["train"].update(epochs="40"), "'epochs' must be an integer, not \"40\""),  # was a TypeError
    (lambda c: c["train"].update(lr=None), "'lr' must be a number, not null"),
    (lambda c: c["model"].update(blocks="4"), "model settings: 'blocks' must be an integer"),
    (lambda c: c["train"]["augment"].update(flip="yes"), "augmentation settings: 'flip' must be true or false"),
])
def test_a_run_config_that_does_not_fit_is_one_line_naming_the_file(tmp_path, change, message):
    from fer_train.config import TrainConfig

    conf = {"model": {"arch": "cnn", "filters": 4}, "train": TrainConfig().to_dict()}
    change(conf)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.CONFIG).write_text(json.dumps(conf))
    for args in (["fit", "--resume", str(tmp_path / "run")],
                 ["fit", "--data", str(FIX), "--out", str(tmp_path / "dnn"), "--arch", "dnn", "--match-params",
                  str(tmp_path / "run" / runs.CONFIG)]):
        r = CliRunner().invoke(app, args)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "config.json" in lines[0] and message in lines[0], r.output


def test_snapshot_members_are_saved_at_cycle_ends_and_gathered(tmp_path):
    """Two cosine cycles: snapshot_1 is the epoch-3 model, snapshot_2 the final one; no early stop between."""
    import keras

    run = tmp_path / "run"
    cfg = _cfg(epochs=5, lr=3e-3, schedule="cosine", warmup_epochs=1, cycles=2, patience=1, precision="float32")
    fit(run, TINY, cfg, log=lambda s: None)
    h = runs.read_history(run)
    assert len(h) == 5  # patience 1 would have stopped a one-cycle run as soon as val_accuracy dipped
    assert h[3]["lr"] == pytest.approx(3e-3) and h[2]["lr"] < h[3]["lr"]  # the rate restarts at epoch 4
    snaps = [run / runs.snapshot_name(k) for k in (1, 2)]
    assert all(p.exists() for p in snaps) and not (run / runs.snapshot_name(3)).exists()
    w1, w2, last = (keras.models.load_model(p, compile=False).get_weights() for p in (*snaps, run / runs.LAST))
    assert all(np.array_equal(a, b) for a, b in zip(w2, last))  # the last cycle ends with the run
    assert not all(np.array_equal(a, b) for a, b in zip(w1, w2))
    r = CliRunner().invoke(app, ["ensemble", *map(str, snaps), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    assert [p.resolve() for p in runs.member_paths(tmp_path / "ens")] == [p.resolve() for p in snaps]


def test_random_erasing_hits_the_asked_share_of_images():
    from fer_train.pipeline import make_augmenter

    only = dict(flip=False, shift=0.0, rotation=0.0, zoom=0.0)
    assert make_augmenter(AugmentConfig(**only)) is None  # nothing asked, nothing built
    x = np.full((400, 48, 48, 1), 128.0, np.float32)
    for p in (0.25, 0.75):
        y = np.asarray(make_augmenter(AugmentConfig(**only, erase=p), seed=1)(x, training=True))
        hit = (y != x).reshape(len(x), -1).any(1)
        assert abs(hit.mean() - p) < 0.08, (p, hit.mean())  # 400 draws: 4 sigma is about 0.09 at p = 0.5
        area = (y != x).reshape(len(x), -1)[hit].mean(1)
        assert 0.01 < np.median(area) < 0.35 and y.min() >= 0 and y.max() <= 255
    with pytest.raises(ValueError, match="erase probability"):
        _cfg(augment=AugmentConfig(erase=1.5)).validate()


def test_the_random_layers_draw_independently_of_each_other():
    """One seed given to every layer made them draw the same numbers: each flip went with one sign of rotation and
    the zoom followed the angle. Each layer's draws must be uncorrelated with every other's."""
    import tensorflow as tf

    from fer_train.pipeline import make_augmenter

    aug = make_augmenter(AugmentConfig(erase=0.5), seed=1234)
    z = tf.zeros((2000, 48, 48, 1))
    for _ in range(2):  # two batches
        flip, rot, shift, zoom, erase = (l.get_random_transformation(z) for l in aug.layers)
        draws = np.stack([np.ravel(flip["flips"]), np.ravel(rot["angle"]), np.asarray(shift["translations"])[:, 0],
                          np.ravel(zoom["height_zoom"]), np.ravel(erase["apply_erasing"])]).astype(np.float64)
        corr = np.corrcoef(draws)
        off = np.abs(corr[~np.eye(len(corr), dtype=bool)])
        assert off.max() < 0.1, np.round(corr, 3)  # 2,000 draws: 4.5 standard errors


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_blend_images_and_targets_alike(kind, policy):
    """Two constant images (0 and 200) with labels 0 and 1: each output image's share of image 1 equals its target's."""
    import keras

    from fer_train.pipeline import make_dataset

    only = dict(flip=False, shift=0.0, rotation=0.0, zoom=0.0)
    x = np.repeat(np.array([0, 200], np.uint8), 32)[:, None, None, None] * np.ones((1, 48, 48, 1), np.uint8)
    y = np.repeat([0, 1], 32)
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)  # fit sets bf16 before building its datasets
    try:
        ds = make_dataset(x, y, 64, training=True, augment=AugmentConfig(**only, **{kind: 1.0}), seed=3)
        imgs, t = (np.asarray(a, np.float64) for a in next(iter(ds)))
    finally:
        keras.mixed_precision.set_global_policy(before)
    share = imgs.reshape(64, -1).mean(1) / 200.0  # mixup: the blend weight; cutmix: the pasted area
    # Keras weights a cutmix target by the box's real-valued area; the pixel grid differs by up to ~half a perimeter
    np.testing.assert_allclose(t[:, 1], share, atol=1e-4 if kind == "mixup" else 0.045)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-5)
    assert t[:, 2:].max() == 0 and ((t[:, 1] > 0.05) & (t[:, 1] < 0.95)).sum() >= 8  # some images really mixed
    blended = ((imgs > 0.5) & (imgs < 199.5)).any()  # mixup blends pixel values, cutmix pastes whole pixels
    assert blended == (kind == "mixup")
    with pytest.raises(ValueError, match="one of mixup and cutmix"):
        _cfg(augment=AugmentConfig(mixup=0.2, cutmix=1.0)).validate()
    with pytest.raises(ValueError, match="class weights"):
        _cfg(class_weights=True, augment=AugmentConfig(**{kind: 0.2})).validate()


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
    import keras

    from fer_train.data import load_source

    runner = CliRunner()
    common = ["--data", str(FIX), "--filters", "4", "--blocks", "2", "--convs-per-block", "1", "--units", "8",
              "--epochs", "1", "--batch-size", "32", "--no-augment", "--precision", "float32"]  # net(x) below is float32 too
    for name in ("a", "b"):
        r = runner.invoke(app, ["fit", "--out", str(tmp_path / name), *common])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "a"), "--split", "private", "--tta", "flip"])  # an alias
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["PrivateTest+flip"]
    private = load_source(FIX)["PrivateTest"]
    net = keras.models.load_model(tmp_path / "a" / runs.BEST, compile=False)
    x = private.x.astype("float32")
    own = (np.asarray(net(x)) + np.asarray(net(x[:, :, ::-1]))) / 2  # flip TTA computed here, independently
    assert m["n"] == 70 and m["accuracy"] == pytest.approx(float((own.argmax(1) == private.y).mean()), abs=1e-9)
    own_nll = float(-np.log(np.clip(own[np.arange(70), private.y], 1e-12, 1)).mean())
    assert m["nll"] == pytest.approx(own_nll, rel=1e-5)  # continuous: sees a TTA the argmax may not
    assert [sum(row) for row in m["confusion"]] == np.bincount(private.y, minlength=7).tolist()
    assert m["members"] == ["best.keras"]  # relative to the metrics file: nothing of this machine
    assert (tmp_path / "a" / "confusion_PrivateTest_flip.png").stat().st_size > 10_000
    assert m["split"] == "PrivateTest" and not list((tmp_path / "a").glob("confusion_private*"))
    r = runner.invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    assert [p.resolve() for p in runs.member_paths(tmp_path / "ens")] == [(tmp_path / n / "best.keras").resolve() for n in "ab"]
    dup = runner.invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / "best.keras"),
                              "--out", str(tmp_path / "ens2")])  # the same model twice would count double
    assert dup.exit_code == 2 and "same member" in dup.output and not (tmp_path / "ens2").exists()
    for extra, said in ((["--like", str(tmp_path / "a")], "not both"), (["--seed", "3"], "apply to members trained")):
        r = runner.invoke(app, ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens3"),
                                *extra])  # were ignored without a word
        assert r.exit_code == 2 and said in r.output and not (tmp_path / "ens3").exists(), r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    for damaged in ("[1, 2]", '{"PublicTest": '):  # a damaged metrics.json: one line naming it, and left as it was
        (tmp_path / "b" / "metrics.json").write_text(damaged)
        r = runner.invoke(app, ["evaluate", str(tmp_path / "b")])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "metrics.json" in lines[0], r.output
        assert (tmp_path / "b" / "metrics.json").read_text() == damaged
    # a course test.csv -> Kaggle submission
    rows = [line.split(",") for line in __import__("gzip").decompress(FIX.read_bytes()).decode().splitlines()[1:6]]
    test = tmp_path / "test.csv"
    test.write_text("id,feature\n" + "".join(f"{i + 100},{px}\n" for i, (_, px, _) in enumerate(rows)))
    r = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(test), "--out", str(tmp_path / "sub.csv")])
    assert r.exit_code == 0, r.output
    sub = list(csv.DictReader((tmp_path / "sub.csv").open()))
    assert [int(s["id"]) for s in sub] == [100, 101, 102, 103, 104] and all(0 <= int(s["label"]) < 7 for s in sub)


def test_evaluate_val_uses_the_rows_the_run_validated_on(tmp_path):
    """A course train.csv has no fixed validation split: evaluate draws the run's own (fraction and seed)."""
    import gzip

    from fer_train.ensemble import write_ensemble
    from fer_train.evaluate import evaluate

    rows = [line.split(",") for line in gzip.decompress(FIX.read_bytes()).decode().splitlines()[1:]]
    course = tmp_path / "train.csv"
    course.write_text("label,feature\n" + "".join(f"{e},{px}\n" for e, px, _ in rows))
    for seed in (7, 8):
        fit(tmp_path / f"r{seed}", TINY, _cfg(data=str(course), epochs=1, val_fraction=0.25, random_seed=seed),
            log=lambda s: None)
    conf = json.loads((tmp_path / "r7" / runs.CONFIG).read_text())
    rep = evaluate(tmp_path / "r7", split="val")
    assert rep["n"] == conf["data"]["val_rows"] != round(0.1 * len(rows))
    assert rep["accuracy"] == pytest.approx(runs.best_epoch(runs.read_history(tmp_path / "r7"))[1], abs=1e-6)
    write_ensemble(tmp_path / "ens", [tmp_path / "r7", tmp_path / "r8"], str(course))
    with pytest.raises(runs.RunError, match="drew different validation rows"):
        evaluate(tmp_path / "ens", split="val")
    # members trained --like r7 keep r7's validation rows (new seeds, same split): evaluable together
    from fer_train.ensemble import train_ensemble

    train_ensemble(tmp_path / "like", [tmp_path / "r7"], [8, 9], epochs=1)
    assert {json.loads((tmp_path / "like" / f"r7_s{s}" / runs.CONFIG).read_text())["train"]["random_seed"]
            for s in (8, 9)} == {8, 9}
    assert evaluate(tmp_path / "like", split="val")["n"] == conf["data"]["val_rows"]
    # fer-train fit --split-seed: the rows of that seed, whatever --random-seed is
    from fer_train.evaluate import validation_settings

    r = CliRunner().invoke(app, ["fit", "--data", str(course), "--out", str(tmp_path / "cli"), "--filters", "4",
                                 "--blocks", "2", "--units", "8", "--epochs", "1", "--no-augment",
                                 "--val-fraction", "0.25", "--random-seed", "3", "--split-seed", "7"])
    assert r.exit_code == 0, r.output
    assert validation_settings(tmp_path / "cli") == {(0.25, 7)}


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    cases = [(["fit", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")], "missing.csv: file not found"),
             (["fit", "--data", str(FIX), "--out", str(tmp_path / "r"), "--cnn-activation", "tanh"],
              "unknown activation 'tanh'"),
             (["fit", "--resume", str(tmp_path / "nothing")], "not found"),
             (["evaluate", str(tmp_path / "nothing")], "no such run")]
    for args, message in cases:
        r = runner.invoke(app, args)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.output)


def test_dnn_match_params_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "cnn"), "--filters", "8", "--blocks", "2",
                            "--units", "64", "--epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "dnn"), "--arch", "dnn",
                            "--match-params", str(tmp_path / "cnn"), "--epochs", "1", "--no-augment", "--json"])
    assert r.exit_code == 0, r.output
    a = json.loads(r.output.strip().splitlines()[-1])["params"]
    b = json.loads(runner.invoke(app, ["fit", "--resume", str(tmp_path / "cnn"), "--json"]).output.strip().splitlines()[-1])["params"]
    assert abs(a - b) / b < 0.05


def test_self_train_on_hidden_labels(tmp_path):
    import keras

    from fer_train.data import load_source

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
    student_data = json.loads((tmp_path / "st" / "student" / runs.CONFIG).read_text())["data"]
    assert (student_data["train_rows"], student_data["extra_rows"]) == (210, 70)
    r = runner.invoke(app, ["fit", "--resume", str(tmp_path / "st" / "student")])  # would drop the 70 rows
    assert r.exit_code == 2 and "continue it with fer-train self-train" in r.output, r.output
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "st"),
                            "--epochs", "2"])  # the student resumes with its own 1 epoch: --epochs 2 would be ignored
    assert r.exit_code == 2 and "started with 1 epochs" in r.output, r.output
    assert info["split"] == "PublicTest"
    public = load_source(FIX)["PublicTest"]
    student = keras.models.load_model(tmp_path / "st" / "student" / runs.BEST, compile=False)
    own = float((np.asarray(student(public.x.astype("float32"))).argmax(1) == public.y).mean())
    assert info["student_accuracy"] == pytest.approx(own, abs=1e-9)
    assert info["gain"] == pytest.approx(info["student_accuracy"] - info["teacher_accuracy"])
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "st" / "student"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 0  # student also hid labels, so it can teach again


def test_mirrored_strategy_runs_on_cpu(tmp_path):
    import keras

    res = fit(tmp_path / "run", TINY, _cfg(epochs=1, strategy="mirrored"), log=lambda s: None)
    assert res["epochs_done"] == 1
    m = keras.models.load_model(tmp_path / "run" / runs.BEST, compile=False)
    p = np.asarray(m(np.zeros((2, 48, 48, 1), "float32")))
    assert p.dtype == np.float32 and np.allclose(p.sum(1), 1, atol=1e-3)


def test_ensemble_like_trains_one_member_per_seed_and_resumes(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "tmpl"), "--filters", "4", "--blocks", "1",
                            "--convs-per-block", "1", "--units", "8", "--epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ensemble", "--like", str(tmp_path / "tmpl"), "--seed", "5", "--seed", "6",
                            "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    spec = json.loads((tmp_path / "ens" / runs.ENSEMBLE).read_text())
    assert [m["path"] for m in spec["members"]] == ["tmpl_s5", "tmpl_s6"]
    assert (tmp_path / "ens" / spec["data"]).resolve() == FIX.resolve()  # stored relative to the ensemble
    for seed in (5, 6):
        conf = json.loads((tmp_path / "ens" / f"tmpl_s{seed}" / runs.CONFIG).read_text())
        assert conf["train"]["random_seed"] == seed and conf["model"]["filters"] == 4
    import keras

    a, b = (keras.models.load_model(tmp_path / "ens" / f"tmpl_s{s}" / runs.BEST, compile=False) for s in (5, 6))
    assert not np.allclose(a.get_layer("logits").get_weights()[0], b.get_layer("logits").get_weights()[0])
    mtime = (tmp_path / "ens" / "tmpl_s5" / runs.LAST).stat().st_mtime_ns
    r = runner.invoke(app, ["ensemble", "--like", str(tmp_path / "tmpl"), "--seed", "5", "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0 and "already trained 1/1" in r.output  # a finished member is not trained again
    assert (tmp_path / "ens" / "tmpl_s5" / runs.LAST).stat().st_mtime_ns == mtime
    r = runner.invoke(app, ["ensemble", "--like", str(tmp_path / "tmpl"), "--seed", "7", "--seed", "5", "--epochs", "3",
                            "--out", str(tmp_path / "ens")])  # tmpl_s5 resumes with its own 1 epoch: --epochs 3 would be ignored
    assert r.exit_code == 2 and "started with 1 epochs" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "ens" / "tmpl_s7").exists()  # refused before any member trained
    import shutil

    other = Path(shutil.copytree(tmp_path / "tmpl", tmp_path / "elsewhere" / "tmpl"))  # another template, same name
    for likes, seeds in (([tmp_path / "tmpl", other], ["7"]), ([tmp_path / "tmpl"], ["7", "7"])):
        args = [a for like in likes for a in ("--like", str(like))] + [a for s in seeds for a in ("--seed", s)]
        r = runner.invoke(app, ["ensemble", *args, "--out", str(tmp_path / "ens2")])
        assert r.exit_code == 2 and "would both train" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "ens2").exists()  # refused before any training


def test_self_train_on_an_unlabelled_course_test_csv(tmp_path):
    import gzip

    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "teacher"), "--filters", "4",
                            "--blocks", "1", "--convs-per-block", "1", "--units", "8", "--epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    lines = [line.split(",") for line in gzip.decompress(FIX.read_bytes()).decode().splitlines()[1:]]
    rows = [r for r in lines if r[2] == "Training"][:25]
    scored = [r for r in lines if r[2] == "PublicTest"][:4] + [r for r in lines if r[2] == "PrivateTest"][:3]
    test = tmp_path / "test.csv"  # a course test.csv holds PublicTest/PrivateTest faces: those are left out
    test.write_text("id,feature\n" + "".join(f"{i},{px}\n" for i, (_, px, _) in enumerate(rows + scored)))
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "st"),
                            "--unlabelled", str(test), "--threshold", "0.0"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "st" / "self_training.json").read_text())
    assert info["unlabelled"] == 25 and info["held_out_left_out"] == 7 and info["pseudo_labelled"] == 25
    assert "pseudo_label_accuracy" not in info
    teacher_rows = json.loads((tmp_path / "teacher" / runs.CONFIG).read_text())["data"]["train_rows"]
    assert len(runs.read_history(tmp_path / "st" / "student")) == 1
    assert json.loads((tmp_path / "st" / "student" / runs.CONFIG).read_text())["data"]["train_rows"] == teacher_rows
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "saw every training label" in r.output
    test.write_text("id,feature\n" + "".join(f"{i},{px}\n" for i, (_, px, _) in enumerate(scored)))
    r = runner.invoke(app, ["self-train", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "y"),
                            "--unlabelled", str(test)])
    assert r.exit_code == 2 and "nothing to pseudo-label" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_class_weights_and_label_smoothing_shape_the_targets():
    from fer_train.data import load_source
    from fer_train.fit import class_weight_vector
    from fer_train.pipeline import make_dataset

    tr = load_source(FIX)["train"]
    w = class_weight_vector(tr.y)
    counts = np.bincount(tr.y, minlength=7)
    assert w[counts.argmax()] == w.min() and w[np.flatnonzero(counts).min()] > 0
    np.testing.assert_allclose(w[counts > 0] * counts[counts > 0], len(tr.y) / 7, rtol=1e-6)  # each class weighs the same
    ds = make_dataset(tr.x[:8], tr.y[:8], 8, training=False, label_smoothing=0.1, class_weights=w)
    xb, tb, wb = next(iter(ds))
    t = tb.numpy()
    np.testing.assert_allclose(t.max(1), 0.9 + 0.1 / 7, rtol=1e-6)
    np.testing.assert_allclose(t.min(1), 0.1 / 7, rtol=1e-6)
    assert (t.argmax(1) == tr.y[:8]).all()
    np.testing.assert_allclose(wb.numpy(), w[tr.y[:8]])


def test_plateau_schedule_lowers_the_rate_when_validation_stalls(tmp_path):
    """After warm-up the base rate is set once; from then on only ReduceLROnPlateau changes it.

    The rate is so small that validation accuracy hardly moves, so the plateau rule (patience 4, factor 0.5,
    floor 1e-6 as fit() configures it) must fire; the expected rates follow from the recorded accuracies.
    """
    from dataclasses import replace

    cfg = _cfg(epochs=9, lr=4e-6, schedule="plateau", warmup_epochs=1, patience=100, precision="float32")
    fit(tmp_path / "run", replace(TINY, batch_norm=False), cfg, log=lambda s: None)  # no moving statistics to drift
    h = runs.read_history(tmp_path / "run")
    expected, lr, best, wait = [], 2e-6, -1.0, 0
    for i, r in enumerate(h):
        expected.append(lr)
        if i == 0:
            lr = 4e-6  # warm-up over: the base rate
        if r["val_accuracy"] > best + 1e-4:
            best, wait = r["val_accuracy"], 0
        else:
            wait += 1
            if wait >= 4:
                lr, wait = max(lr * 0.5, 1e-6), 0
    assert [r["lr"] for r in h] == pytest.approx(expected, rel=1e-5)
    assert min(expected[1:]) < 4e-6  # the rule did fire in this run


def test_help_is_quiet_and_shows_whole_option_names():
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "fer_train.cli", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stderr == "" and "fit" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fer_train.cli", "fit", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "…" not in r.stdout
    for name in ("--cnn-activation-alpha", "--dnn-activation-alpha", "--distill-temperature", "--teacher-tta", "--val-fraction"):
        assert name in r.stdout, name


def test_cli_run_is_quiet_and_ends_with_a_summary_or_json(tmp_path):
    """A CPU machine's fit prints no TensorFlow start-up chatter; the end is a human line, or JSON with --json."""
    args = [sys.executable, "-m", "fer_train.cli", "fit", "--data", str(FIX), "--filters", "4", "--blocks", "1",
            "--convs-per-block", "1", "--units", "8", "--epochs", "1", "--no-augment"]
    r = subprocess.run([*args, "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "cuInit" not in r.stderr and "absl" not in r.stderr and "I0000" not in r.stderr, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith(f"{tmp_path / 'a'}: 1 epoch(s) done, best val_accuracy")
    assert "epoch 1/1" in r.stderr  # one line per epoch
    r = subprocess.run([*args, "--out", str(tmp_path / "b"), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["epochs_done"] == 1
    summary = (tmp_path / "b" / runs.SUMMARY).read_text()
    params = json.loads(r.stdout.strip().splitlines()[-1])["params"]
    assert summary.count("Total params") == 1 and f"Total params: {params:,}" in summary
    assert any(line.split() == ["logits", "Dense", "Nx7", "63"] for line in summary.splitlines()), summary


def test_an_epochs_batches_are_its_seeded_permutation_in_order():
    """With an ``epoch`` variable, epoch k's batches are the rows of stateless_shuffle(range(n), (seed, k)), in
    order and cut into batches (what makes a resumed run see the batches an uninterrupted one saw)."""
    import tensorflow as tf

    from fer_train.pipeline import make_dataset

    n, bs, seed = 70, 16, 5
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 48, 48, 1), np.uint8)
    y = np.arange(n) % 7
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = make_dataset(x, y, bs, training=True, seed=seed, epoch=epoch)
    assert int(ds.cardinality()) == 5
    for k in (0, 3):
        epoch.assign(k)
        want = tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, k]).numpy()
        got = [(b[0].numpy()[:, 0, 0, 0].astype(int), b[1].numpy().argmax(1)) for b in ds]
        assert [len(r) for r, _ in got] == [16, 16, 16, 16, 6]
        np.testing.assert_array_equal(np.concatenate([r for r, _ in got]), want)
        np.testing.assert_array_equal(np.concatenate([t for _, t in got]), want % 7)
        assert ds.element_spec[0].dtype == tf.float32


def test_fit_option_defaults_are_the_config_defaults():
    """`fer-train fit`'s option defaults repeat ModelConfig's, TrainConfig's and AugmentConfig's (typer needs them
    in the signature); `fer-train evaluate` and the library rely on the dataclasses being what fit defaults to."""
    import dataclasses
    import inspect

    from fer_train import cli
    from fer_train.config import TrainConfig
    from fer_train.models import ModelConfig
    from fer_train.pipeline import AugmentConfig

    options = inspect.signature(cli.fit).parameters
    paths = {"data", "ferplus", "teacher", "init"}  # None on the command line, "" in the config
    inherited = {"act_quant"}  # None on the command line: as --init's run, else the config default
    checked = 0
    for cls in (ModelConfig, TrainConfig, AugmentConfig):
        for f in dataclasses.fields(cls):
            if f.name in inherited:
                assert options[f.name].default.default is None and f.default is False, f.name
            elif f.name in options and f.name not in paths and f.default is not dataclasses.MISSING:
                assert options[f.name].default.default == f.default, (cls.__name__, f.name)
                checked += 1
    assert checked >= 40 and options["augment"].default.default == AugmentConfig().enabled
    assert all(options[p].default.default is None and getattr(TrainConfig(), p) == "" for p in paths)


@pytest.mark.parametrize("cooldown", [0, 1])
def test_a_resumed_plateau_schedule_cuts_the_rate_where_an_uninterrupted_one_does(cooldown):
    """--schedule plateau: a run resumed after any epoch gets the learning rates of one that never stopped."""
    import keras

    from fer_train.callbacks import ResumablePlateau

    vals = [0.30, 0.40, 0.41, 0.40, 0.39, 0.41, 0.40, 0.42, 0.41, 0.41, 0.40, 0.41, 0.40, 0.40, 0.39, 0.43, 0.40, 0.4]

    def rates(resume_at: int | None) -> list[float]:
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(1.0), "mse")
        out = []
        for e, v in enumerate(vals):
            if e in (0, resume_at):  # a new process: a new callback that sees the history so far
                cb = ResumablePlateau([{"val_accuracy": x} for x in vals[:e]], factor=0.5, patience=3,
                                      cooldown=cooldown)
                cb.set_model(model)
                cb.on_train_begin()
            cb.on_epoch_end(e, {"val_accuracy": v})
            out.append(float(model.optimizer.learning_rate))
        return out

    whole = rates(None)
    assert whole[-1] <= 0.25  # the sequence has plateaus: at least two cuts
    assert [e for e in range(1, len(vals)) if rates(e) != whole] == []
