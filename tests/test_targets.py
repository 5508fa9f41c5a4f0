"""Soft training targets: FER+ vote files, blending with labels, teacher distillation."""
from __future__ import annotations

import csv
import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fer_train.data import DataFormatError, load_source
from fer_train.targets import FERPLUS_COLUMNS, blend, ferplus_targets, load_ferplus_votes, soften

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
          "contempt", "unknown", "NF"]


def _fixture_usage() -> list[str]:
    with gzip.open(FIX, "rt", newline="") as f:
        return [r["Usage"] for r in csv.DictReader(f)]


def _fixture_rows():
    """The fixture's DataSource, its Usage column and the label of every row in file order."""
    src = load_source(FIX)
    usage = _fixture_usage()
    all_y = np.zeros(len(usage), np.int64)
    for name in ("Training", "PublicTest", "PrivateTest"):
        all_y[src[name].ids] = src[name].y
    return src, usage, all_y


def _write_votes(path: Path, usage: list[str], rows: list[list[int]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, (u, r) in enumerate(zip(usage, rows)):
            w.writerow([u, f"fer{i:07d}.png", *r])
    return path


def _votes_for(y: np.ndarray, agree: int = 7) -> list[list[int]]:
    """Votes per row: ``agree`` for the label's class, the rest on 'neutral', plus junk columns."""
    by_class = {v: k for k, v in FERPLUS_COLUMNS.items()}
    order = HEADER[2:9]
    rows = []
    for label in y:
        r = [0] * 10
        r[order.index(by_class[int(label)])] += agree
        r[order.index("neutral")] += 10 - agree
        r[7] = 3  # contempt: ignored
        rows.append(r)
    return rows


def test_votes_map_to_fer2013_classes_and_ignore_others(tmp_path):
    # happiness only; surprise+fear split; only contempt/unknown (no FER2013 class)
    p = _write_votes(tmp_path / "v.csv", ["Training"] * 3,
                     [[0, 10, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 6, 0, 0, 0, 2, 0, 2, 0], [0, 0, 0, 0, 0, 0, 0, 5, 5, 0]])
    dist, usage = load_ferplus_votes(p)
    assert dist.shape == (3, 7) and list(usage) == ["Training"] * 3
    np.testing.assert_allclose(dist[0], np.eye(7)[3])
    np.testing.assert_allclose(dist[1], [0, 0, 0.25, 0, 0, 0.75, 0])
    assert dist[2].sum() == 0


def test_each_ferplus_column_lands_on_its_fer2013_class(tmp_path):
    """Every emotion column of the FER+ file, one row each, against the class order written out here (not taken
    from FERPLUS_COLUMNS, which would make the check circular)."""
    from fer_runtime.labels import LABELS

    want = {"neutral": "Neutral", "happiness": "Happy", "surprise": "Surprise", "sadness": "Sad", "anger": "Angry",
            "disgust": "Disgust", "fear": "Fear"}
    votes = [[10 if HEADER[2 + j] == col else 0 for j in range(10)] for col in want]
    dist, _ = load_ferplus_votes(_write_votes(tmp_path / "v.csv", ["Training"] * 7, votes))
    for row, col in zip(dist, want):
        assert LABELS[int(row.argmax())] == want[col] and row.max() == 1, (col, row)


def test_malformed_vote_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Usage,neutral\nTraining,1\n")
    with pytest.raises(DataFormatError, match="lacks column"):
        load_ferplus_votes(bad)
    p = _write_votes(tmp_path / "v.csv", ["Training"] * 2, [[1] * 10, [1] * 10])
    good = p.read_text()
    p.write_text(good.replace("1,1,1,1,1,1,1,1,1,1\n", "1,x,1,1,1,1,1,1,1,1\n", 1))
    with pytest.raises(DataFormatError, match=r"v\.csv:2: vote counts must be numbers"):
        load_ferplus_votes(p)
    for cell in ("nan", "inf", "-3"):  # a NaN target would turn the loss NaN with no error
        p.write_text(good.replace("1,1,1,1,1,1,1,1,1,1\n", f"1,{cell},1,1,1,1,1,1,1,1\n", 1))
        with pytest.raises(DataFormatError, match=r"v\.csv:2: vote counts must be finite and >= 0"):
            load_ferplus_votes(p)
    lines = good.splitlines()
    p.write_text("\n".join(lines[:-1] + [",".join(lines[-1].split(",")[:10])]) + "\n")  # the last row cut short
    with pytest.raises(DataFormatError, match=r"v\.csv:3: expected 12 fields, found"):
        load_ferplus_votes(p)
    with pytest.raises(DataFormatError, match="file not found"):
        load_ferplus_votes(tmp_path / "missing.csv")


def test_vote_files_may_be_gzipped_or_start_with_a_bom(tmp_path):
    p = _write_votes(tmp_path / "v.csv", ["Training"] * 2, [[1] * 10, [0, 4] + [0] * 8])
    want = load_ferplus_votes(p)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    gz = tmp_path / "v.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    for other in (bom, gz):
        dist, usage = load_ferplus_votes(other)
        np.testing.assert_array_equal(dist, want[0])
        assert list(usage) == list(want[1])


def test_ferplus_targets_align_with_the_data_rows(tmp_path):
    src, usage, all_y = _fixture_rows()
    p = _write_votes(tmp_path / "v.csv", usage, _votes_for(all_y))
    train = src["Training"]
    dist, mask = ferplus_targets(p, train, len(usage))
    assert mask.all()
    assert (dist.argmax(1) == train.y).all()
    np.testing.assert_allclose(dist[train.y != 6][np.arange((train.y != 6).sum()), train.y[train.y != 6]], 0.7, atol=1e-6)
    with pytest.raises(DataFormatError, match="has 420 vote rows but the data file has 421"):
        ferplus_targets(p, train, len(usage) + 1)
    shifted = _write_votes(tmp_path / "s.csv", ["PublicTest"] + usage[:-1], _votes_for(all_y))
    with pytest.raises(DataFormatError, match="not in the data file's row order"):
        ferplus_targets(shifted, train, len(usage))


def test_blend_weights_and_masks():
    y = np.array([0, 3, 5])
    soft = np.full((3, 7), 1 / 7, np.float32)
    out = blend(y, [(0.3, soft, np.array([True, False, True]))])
    np.testing.assert_allclose(out.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(out[1], np.eye(7)[3])  # masked out: pure label
    np.testing.assert_allclose(out[0, 0], 0.7 + 0.3 / 7, atol=1e-6)
    two = blend(y, [(0.25, soft, None), (0.25, np.eye(7, dtype=np.float32)[[6, 6, 6]], None)])
    np.testing.assert_allclose(two[:, 6], [0.25 + 0.25 / 7] * 3, atol=1e-6)
    np.testing.assert_allclose(blend(y, []), np.eye(7)[y])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        blend(y, [(1.5, soft, None)])


def test_soften_keeps_order_and_flattens():
    p = np.array([[0.7, 0.2, 0.1, 0, 0, 0, 0]], np.float32) + 1e-6
    p /= p.sum()
    np.testing.assert_allclose(soften(p, 1.0), p, rtol=1e-5)
    s = soften(p, 3.0)
    assert s.argmax() == 0 and s.max() < p.max() and s.sum() == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError):
        soften(p, 0)


def _tiny_teacher(run: Path):
    """(A tiny CNN config, quick TrainConfig settings on the fixture) and a teacher run fitted with them at ``run``."""
    from fer_train.fit import TrainConfig, fit
    from fer_train.models import ModelConfig
    from fer_train.pipeline import AugmentConfig

    tiny = ModelConfig(filters=4, blocks=1, convs_per_block=1, units=8, conv_dropout=0, dense_dropout=0)
    base = dict(data=str(FIX), epochs=1, batch_size=64, schedule="constant", warmup_epochs=0,
                augment=AugmentConfig(enabled=False))
    fit(run, tiny, TrainConfig(**base), log=lambda s: None)
    return tiny, base


@pytest.mark.tf
def test_fit_blends_ferplus_and_teacher_targets(tmp_path):
    from fer_train.inference import load_models, predict_probs
    from fer_train.fit import TrainConfig, fit, training_targets

    src, usage, all_y = _fixture_rows()
    votes = _write_votes(tmp_path / "v.csv", usage, _votes_for(all_y))
    tiny, base = _tiny_teacher(tmp_path / "teacher")
    cfg = TrainConfig(**base, ferplus=str(votes), ferplus_weight=0.2, teacher=str(tmp_path / "teacher"),
                      distill_weight=0.5, distill_temperature=2.0)
    train = src["Training"]
    t = training_targets(cfg, train, len(usage), log=lambda s: None)
    teacher = soften(predict_probs(load_models(tmp_path / "teacher"), train.x, tta="flip"), 2.0)
    dist, _ = ferplus_targets(votes, train, len(usage))
    want = 0.3 * np.eye(7)[train.y] + 0.2 * dist + 0.5 * teacher
    np.testing.assert_allclose(t, want, atol=1e-5)
    res = fit(tmp_path / "student", tiny, cfg, log=lambda s: None)  # the whole fit path accepts the targets
    assert res["epochs_done"] == 1
    with pytest.raises(ValueError, match="must not exceed 1"):
        TrainConfig(**base, ferplus=str(votes), ferplus_weight=0.6, teacher="t", distill_weight=0.6).validate()
    with pytest.raises(ValueError, match="needs --teacher"):
        TrainConfig(**base, distill_weight=0.5).validate()


@pytest.mark.tf
def test_teacher_follows_its_tta_and_a_run_reads_its_cached_probabilities(tmp_path, monkeypatch):
    import fer_train.inference as inference
    from fer_train import runs
    from fer_train.fit import TrainConfig, training_targets
    from fer_train.targets import teacher_targets

    src, usage, _ = _fixture_rows()
    tiny, base = _tiny_teacher(tmp_path / "teacher")
    cfg = TrainConfig(**base, teacher=str(tmp_path / "teacher"), distill_weight=1.0, distill_temperature=2.0,
                      teacher_tta="crops")
    train, run = src["Training"], tmp_path / "student"
    models = inference.load_models(tmp_path / "teacher")
    crops = soften(inference.predict_probs(models, train.x, tta="crops"), 2.0)
    assert np.abs(crops - soften(inference.predict_probs(models, train.x, tta="flip"), 2.0)).max() > 1e-3
    np.testing.assert_allclose(training_targets(cfg, train, len(usage), lambda s: None, run), crops, atol=1e-6)
    assert (run / runs.TEACHER_PROBS).exists()

    def no_predicting(*a, **k):
        raise AssertionError("predicted again")
    monkeypatch.setattr(inference, "predict_probs", no_predicting)
    np.testing.assert_allclose(training_targets(cfg, train, len(usage), lambda s: None, run), crops, atol=1e-6)
    for tta, x in (("flip", train.x), ("crops", train.x[:-1])):  # another TTA or other images: predicted again
        with pytest.raises(AssertionError, match="predicted again"):
            teacher_targets(tmp_path / "teacher", x, 2.0, tta, run / runs.TEACHER_PROBS)
    for damaged in (b"not an npz", b"", (run / runs.TEACHER_PROBS).read_bytes()[:100]):  # predicted again, no numpy error
        (run / runs.TEACHER_PROBS).write_bytes(damaged)
        with pytest.raises(AssertionError, match="predicted again"):
            teacher_targets(tmp_path / "teacher", train.x, 2.0, "crops", run / runs.TEACHER_PROBS)
    with pytest.raises(ValueError, match="unknown teacher TTA"):
        TrainConfig(**base, teacher="t", distill_weight=0.5, teacher_tta="ten").validate()


@pytest.mark.tf
def test_a_run_resumes_only_with_the_teacher_it_started_with(tmp_path):
    """config.json records the teacher's member files, in any order; another teacher is refused on resume, and a run
    from before the record, or with a record in member order, gets the current record on its next resume."""
    import json

    from fer_train import runs
    from fer_train.ensemble import write_ensemble
    from fer_train.fit import TrainConfig, fit
    from fer_train.targets import legacy_teacher_sha256, teacher_sha256

    tiny, base = _tiny_teacher(tmp_path / "teacher")
    fit(tmp_path / "other", tiny, TrainConfig(**base, random_seed=5), log=lambda s: None)
    ab, ba = tmp_path / "ab", tmp_path / "ba"
    write_ensemble(ab, [tmp_path / "teacher", tmp_path / "other"])
    write_ensemble(ba, [tmp_path / "other", tmp_path / "teacher"])
    assert teacher_sha256(ab) == teacher_sha256(ba)  # the teacher averages its members: their order is not part of it
    assert legacy_teacher_sha256(ab) != legacy_teacher_sha256(ba)
    if legacy_teacher_sha256(ab) == teacher_sha256(ab):  # start with the order whose old record differs from the new
        ab, ba = ba, ab
    cfg = TrainConfig(**{**base, "epochs": 4}, teacher=str(ab), distill_weight=0.5)
    run = tmp_path / "student"

    def stop_in(epoch):  # progress counts epochs from 0: this stops after ``epoch`` epochs
        def stop(e, step, steps):
            if e == epoch and step == 1:
                raise KeyboardInterrupt
        return stop
    with pytest.raises(KeyboardInterrupt):
        fit(run, tiny, cfg, log=lambda s: None, progress=stop_in(1))
    conf = json.loads((run / runs.CONFIG).read_text())
    assert conf["teacher"] == {"sha256": teacher_sha256(ab), "members": 2}
    with pytest.raises(runs.RunError, match="is not the one the run started with.*pass the same teacher"):
        fit(run, resume=True, moved={"teacher": str(tmp_path / "other")}, log=lambda s: None)
    assert len(runs.read_history(run)) == 1 and json.loads((run / runs.CONFIG).read_text()) == conf

    conf["teacher"]["sha256"] = legacy_teacher_sha256(ab)  # as written before the order was ignored: accepted, rewritten
    (run / runs.CONFIG).write_text(json.dumps(conf))
    with pytest.raises(KeyboardInterrupt):
        fit(run, resume=True, log=lambda s: None, progress=stop_in(2))
    assert len(runs.read_history(run)) == 2
    assert json.loads((run / runs.CONFIG).read_text())["teacher"]["sha256"] == teacher_sha256(ab)

    with pytest.raises(KeyboardInterrupt):  # the same members in another order: the same teacher
        fit(run, resume=True, moved={"teacher": str(ba)}, log=lambda s: None, progress=stop_in(3))
    assert len(runs.read_history(run)) == 3

    conf = json.loads((run / runs.CONFIG).read_text())
    recorded = conf.pop("teacher")  # as written before the record existed: not checked, and recorded on this resume
    (run / runs.CONFIG).write_text(json.dumps(conf))
    assert fit(run, resume=True, log=lambda s: None)["epochs_done"] == 4
    assert json.loads((run / runs.CONFIG).read_text())["teacher"] == recorded


@pytest.mark.tf
def test_a_live_teacher_labels_each_batch_as_the_student_sees_it(tmp_path):
    """--teacher-mode live: the teacher's probabilities are those of the augmented, mixed images of the batch, blended
    as a cached teacher's are, and nothing is cached."""
    import tensorflow as tf

    from fer_train import runs
    from fer_train.fit import TrainConfig, fit, training_targets
    from fer_train.inference import load_models, predict_probs
    from fer_train.pipeline import AugmentConfig, make_dataset
    from fer_train.targets import live_teacher

    src, usage, all_y = _fixture_rows()
    votes = _write_votes(tmp_path / "v.csv", usage, _votes_for(all_y))
    tiny, base = _tiny_teacher(tmp_path / "teacher")
    train = src["Training"]

    f = live_teacher(tmp_path / "teacher", 2.0, "flip")  # the cached teacher's numbers, on any batch
    want = soften(predict_probs(load_models(tmp_path / "teacher"), train.x[:50], tta="flip"), 2.0)
    np.testing.assert_allclose(f(tf.constant(train.x[:50].reshape(-1, 48, 48, 1).astype(np.float32))).numpy(),
                               want, atol=1e-5)

    # the same targets as a cached teacher's, except the teacher's share, which comes per batch
    live = TrainConfig(**base, ferplus=str(votes), ferplus_weight=0.2, teacher=str(tmp_path / "teacher"),
                       distill_weight=0.5, teacher_mode="live")
    dist, _ = ferplus_targets(votes, train, len(usage))
    t = training_targets(live, train, len(usage), log=lambda s: None)
    np.testing.assert_allclose(0.5 * t, 0.3 * np.eye(7)[train.y] + 0.2 * dist, atol=1e-6)

    def brightness(a):  # a stand-in teacher whose answer depends on the very pixels it is given
        m = tf.reduce_mean(a, axis=[1, 2, 3]) / 255.0
        return tf.nn.softmax(tf.stack([m * k for k in range(7)], axis=1) * 20.0)
    aug = AugmentConfig(enabled=True, mixup=0.4)
    ds = make_dataset(train.x, train.y, 32, training=True, augment=aug, seed=3, teacher=(brightness, 0.7))
    images, targets = next(iter(ds))
    labels_part = (targets.numpy() - 0.7 * brightness(images).numpy()) / 0.3
    assert np.abs(images.numpy() - train.x[:32].reshape(-1, 48, 48, 1)).max() > 1  # augmented and shuffled
    np.testing.assert_allclose(labels_part.sum(1), 1.0, atol=1e-5)
    assert labels_part.min() > -1e-5  # what is left is the mixed labels: the teacher saw the returned images
    assert ((labels_part > 1e-4).sum(1) <= 2).all()  # a blend of two one-hot labels, nothing of another teacher answer

    # label smoothing comes after the teacher's share, as for a cached teacher
    plain = make_dataset(train.x[:32], train.y[:32], 32, training=True, label_smoothing=0.1, seed=3,
                         teacher=(brightness, 0.7), augment=AugmentConfig(enabled=False))
    images, targets = next(iter(plain))
    order = [int(np.flatnonzero((train.x[:32].reshape(32, -1) == im.reshape(-1)).all(1))[0]) for im in images.numpy()]
    want = (0.3 * np.eye(7)[train.y[:32][order]] + 0.7 * brightness(images).numpy()) * 0.9 + 0.1 / 7
    np.testing.assert_allclose(targets.numpy(), want, atol=1e-5)

    import keras  # under a bfloat16 policy the augmented images are bfloat16; the teacher still gets float32

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bf = make_dataset(train.x[:32], train.y[:32], 16, training=True, augment=AugmentConfig(enabled=True),
                          teacher=(f, 0.5))
        assert next(iter(bf))[1].shape == (16, 7)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    edge = TrainConfig(**base, ferplus=str(votes), ferplus_weight=0.1, teacher="t", distill_weight=0.9,
                       teacher_mode="live")  # 0.1 / (1 - 0.9) is a hair over 1 in floating point
    np.testing.assert_allclose(training_targets(edge, train, len(usage), log=lambda s: None).sum(1), 1.0, atol=1e-6)

    res = fit(tmp_path / "student", tiny, replace(live, augment=aug), log=lambda s: None)
    assert res["epochs_done"] == 1 and not (tmp_path / "student" / runs.TEACHER_PROBS).exists()
    with pytest.raises(ValueError, match="--teacher-mode live needs a teacher"):
        TrainConfig(**base, teacher_mode="live").validate()
    with pytest.raises(ValueError, match="self-training does not support --teacher-mode live"):
        fit(tmp_path / "selftrained", tiny, live, extra_train=(train.x[:4], np.eye(7, dtype=np.float32)[train.y[:4]]),
            log=lambda s: None)
    assert not (tmp_path / "selftrained").exists()
    with pytest.raises(ValueError, match="does not support --strategy multiworker"):
        TrainConfig(**base, teacher="t", distill_weight=0.5, teacher_mode="live", strategy="multiworker").validate()
    with pytest.raises(ValueError, match="unknown teacher mode"):
        TrainConfig(**base, teacher="t", distill_weight=0.5, teacher_mode="online").validate()
