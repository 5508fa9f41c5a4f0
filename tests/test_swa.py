"""Weight averaging (fer_train.swa) and fine-tuning from a run (--init): the mean, its batch norm, resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

import keras  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fer_train import runs, swa  # noqa: E402
from fer_train.data import load_source  # noqa: E402
from fer_train.cli import app  # noqa: E402
from fer_train.fit import TrainConfig, fit  # noqa: E402

from tiny_runs import FIX, TINY, tiny_train_config  # noqa: E402  (tests/tiny_runs.py)


def _cfg(**kw) -> TrainConfig:
    return tiny_train_config(**{"limit_train": 256, **kw})


def _weights(path: Path) -> list[np.ndarray]:
    return [v.numpy() for v in keras.models.load_model(path, compile=False).trainable_weights]


def _bn_model() -> keras.Model:
    inp = keras.Input((3, 3, 2))
    y = keras.layers.BatchNormalization(momentum=0.9, name="bn")(inp)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(y)))


def test_recompute_batch_norm_sets_the_mean_of_the_batch_statistics():
    model = _bn_model()
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 1 + loc, (5, 3, 3, 2)).astype(np.float32) for loc in (0.0, 2.0, 5.0)]
    assert swa.recompute_batch_norm(model, ((b, None) for b in batches)) == 3
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean((0, 1, 2)) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var((0, 1, 2)) for b in batches], 0), rtol=1e-5)
    assert bn.momentum == 0.9  # restored


def test_averager_keeps_a_running_mean_that_a_resumed_run_continues(tmp_path):
    model = _bn_model()
    snaps = []

    def epoch_end(averager, epoch):
        for v in model.trainable_weights:
            v.assign(np.full(v.shape, float(epoch + 1) ** 2, np.float32))
        snaps.append([v.numpy() for v in model.trainable_weights])
        averager.on_epoch_end(epoch)

    a = swa.WeightAverager(tmp_path, start=2, log=lambda s: None)
    a.set_model(model)
    for e in range(3):  # epochs 1..3; epoch 1 is before the start
        epoch_end(a, e)
    mean, count, last = swa.read_state(tmp_path)
    assert (count, last) == (2, 3)
    for m, s2, s3 in zip(mean, snaps[1], snaps[2]):
        np.testing.assert_allclose(m, (s2 + s3) / 2)
    b = swa.WeightAverager(tmp_path, start=2, log=lambda s: None)  # a resumed run after epoch 3
    b.set_model(model)
    b.resume(3)
    epoch_end(b, 3)
    mean, count, last = swa.read_state(tmp_path)
    assert (count, last) == (3, 4)
    for m, s2, s3, s4 in zip(mean, snaps[1], snaps[2], snaps[3]):
        np.testing.assert_allclose(m, (s2 + s3 + s4) / 3)
    with pytest.raises(runs.RunError, match="averaged up to epoch 4, but the run has only 3"):
        swa.WeightAverager(tmp_path, start=2).resume(3)
    said = []
    swa.WeightAverager(tmp_path, start=2, log=said.append).resume(5)
    assert "epoch 5 is missing from the average" in said[0]
    whole = (tmp_path / runs.SWA_STATE).read_bytes()
    for damaged in (b"not an npz", b"", whole[:len(whole) // 2]):  # the empty file was an EOFError traceback
        (tmp_path / runs.SWA_STATE).write_bytes(damaged)
        with pytest.raises(runs.RunError, match="unreadable"):
            swa.read_state(tmp_path)


def test_a_resume_adds_the_epoch_whose_weights_were_saved_but_not_averaged(tmp_path):
    """Killed between saving last.keras and the mean: the resumed averager takes that epoch from the loaded model."""
    model = _bn_model()

    def weights_of(epoch):
        for v in model.trainable_weights:
            v.assign(np.full(v.shape, float(epoch) ** 2, np.float32))

    a = swa.WeightAverager(tmp_path / "r", start=1, log=lambda s: None)
    (tmp_path / "r").mkdir()
    a.set_model(model)
    for e in (1, 2):
        weights_of(e)
        a.on_epoch_end(e - 1)
    weights_of(3)  # epoch 3 ended and was saved in last.keras, then the kill: the mean still ends at epoch 2
    said: list[str] = []
    swa.WeightAverager(tmp_path / "r", start=1, log=said.append).resume(3, model)
    mean, count, last = swa.read_state(tmp_path / "r")
    assert (count, last) == (3, 3) and "epoch 3 added" in said[0]
    for m in mean:
        np.testing.assert_allclose(m, (1 + 4 + 9) / 3)
    # the same at the first averaged epoch, before any mean was saved; and nothing before the start epoch
    (tmp_path / "s").mkdir()
    swa.WeightAverager(tmp_path / "s", start=4, log=lambda s: None).resume(3, model)
    assert swa.read_state(tmp_path / "s") is None
    swa.WeightAverager(tmp_path / "s", start=3, log=lambda s: None).resume(3, model)
    mean, count, last = swa.read_state(tmp_path / "s")
    assert (count, last) == (1, 3) and all(np.allclose(m, 9) for m in mean)


def test_fit_saves_the_mean_with_fresh_batch_norm_statistics(tmp_path):
    run = tmp_path / "run"
    # lr 0: validation accuracy levels off (only batch-norm statistics move), which would stop the run after
    # epoch 3 with patience 1, but an averaging run does not stop early
    res = fit(run, TINY, _cfg(epochs=4, swa_start=4, patience=1, lr=0.0, precision="float32"), log=lambda s: None)
    done = json.loads((run / runs.SWA_RESULT).read_text())
    assert len(runs.read_history(run)) == 4 and done["epochs_averaged"] == 1 and done["last_epoch"] == 4 and done["bn_batches"] == 8  # 256 rows / 32
    assert res["swa_val_accuracy"] == pytest.approx(done["val_accuracy"])
    val = load_source(FIX)["val"]  # what fit validates on: PublicTest of the Kaggle layout
    pred = keras.models.load_model(run / runs.SWA_MODEL, compile=False).predict(val.x, batch_size=256, verbose=0)
    assert done["val_accuracy"] == pytest.approx(float((pred.argmax(1) == val.y).mean()), abs=1e-6)
    for a, b in zip(_weights(run / runs.SWA_MODEL), _weights(run / runs.LAST)):  # the mean of one epoch: itself
        np.testing.assert_array_equal(a, b)
    swa_m, last = (keras.models.load_model(run / n, compile=False) for n in (runs.SWA_MODEL, runs.LAST))
    bn = [l.name for l in swa_m.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn and all(not np.allclose(swa_m.get_layer(n).moving_mean.numpy(), last.get_layer(n).moving_mean.numpy())
                      for n in bn)


def test_interrupted_swa_run_resumes_to_the_uninterrupted_mean(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    fit(ref, TINY, _cfg(epochs=4, swa_start=2), log=lambda s: None)

    def stop(epoch, step, steps):
        if epoch == 3 and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(run, TINY, _cfg(epochs=4, swa_start=2), log=lambda s: None, progress=stop)
    assert swa.read_state(run)[1:] == (2, 3) and not (run / runs.SWA_MODEL).exists()
    fit(run, resume=True, log=lambda s: None)
    assert json.loads((run / runs.SWA_RESULT).read_text())["epochs_averaged"] == 3
    for a, b in zip(_weights(run / runs.SWA_MODEL), _weights(ref / runs.SWA_MODEL)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_init_starts_from_a_runs_weights_and_architecture(tmp_path):
    src = tmp_path / "src"
    fit(src, TINY, _cfg(epochs=1), log=lambda s: None)
    tuned = tmp_path / "tuned"
    r = CliRunner().invoke(app, ["fit", "--data", str(FIX), "--out", str(tuned), "--init", str(src), "--filters", "99",
                                 "--epochs", "1", "--lr", "0", "--schedule", "constant", "--warmup-epochs", "0",
                                 "--optimizer", "sgd", "--limit-train", "64", "--no-augment"])
    assert r.exit_code == 0, r.output
    conf = json.loads((tuned / runs.CONFIG).read_text())
    assert conf["model"]["filters"] == 8 and conf["train"]["init"] == "../src"
    for a, b in zip(_weights(tuned / runs.LAST), _weights(src / runs.BEST)):  # lr 0: the weights it started from
        np.testing.assert_array_equal(a, b)
    r = CliRunner().invoke(app, ["fit", "--data", str(FIX), "--out", str(tmp_path / "x"), "--init", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "nope" in r.output and "Traceback" not in r.output


def test_batch_norm_of_the_mean_is_recomputed_on_unblended_images(tmp_path, monkeypatch):
    """With mixup, the training batches are blends; the mean's batch norm must see the faces themselves."""
    seen = []
    recompute = swa.recompute_batch_norm

    def spy(model, batches):
        batches = list(batches)
        seen.extend(np.asarray(t) for _, t in batches)
        return recompute(model, batches)

    monkeypatch.setattr(swa, "recompute_batch_norm", spy)
    from fer_train.pipeline import AugmentConfig

    fit(tmp_path / "run", TINY, _cfg(epochs=2, swa_start=2, augment=AugmentConfig(mixup=0.4)), log=lambda s: None)
    targets = np.concatenate(seen)
    assert len(targets) == 256 and np.array_equal(targets.max(1), np.ones(256, np.float32))  # one-hot: not blended


def test_init_from_a_run_that_drew_other_validation_rows_is_refused(tmp_path):
    """On a course train.csv the validation rows come from a seed: starting from a run of another seed would
    validate on rows its weights were trained on."""
    import gzip

    rows = [line.split(",") for line in gzip.decompress(FIX.read_bytes()).decode().splitlines()[1:]]
    course = tmp_path / "train.csv"
    course.write_text("label,feature\n" + "".join(f"{e},{px}\n" for e, px, _ in rows))
    src = tmp_path / "src"
    fit(src, TINY, _cfg(data=str(course), epochs=1, random_seed=7), log=lambda s: None)
    with pytest.raises(runs.RunError, match=r"--init .*src drew its validation rows .* add --split-seed 7 "):
        fit(tmp_path / "a", TINY, _cfg(data=str(course), epochs=1, random_seed=8, init=str(src)), log=lambda s: None)
    assert not (tmp_path / "a" / runs.HISTORY).exists()
    fit(tmp_path / "b", TINY, _cfg(data=str(course), epochs=1, random_seed=8, split_seed=7, init=str(src)),
        log=lambda s: None)  # the same validation rows, another seed for everything else
    assert len(runs.read_history(tmp_path / "b")) == 1
