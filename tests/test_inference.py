"""fer_train.inference: member logits over TTA views, probabilities at a temperature, TF's reference saliency.

References here are computed directly from the Keras models (their own ``probs`` softmax output, a
``logits`` sub-model, GradientTape), not through the module under test.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from fer_train import inference  # noqa: E402
from fer_train.data import load_kaggle_csv  # noqa: E402
from fer_train.models import ModelConfig, build_model  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"


@pytest.fixture(scope="module")
def models():
    out = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        out.append(build_model(ModelConfig(filters=4, blocks=2, convs_per_block=1, units=8)))
    return out


@pytest.fixture(scope="module")
def x():
    return load_kaggle_csv(FIX)["PublicTest"].x[:10].astype(np.float32)


def _logits(model, x):
    return keras.Model(model.inputs[0], model.get_layer("logits").output)(x, training=False).numpy()


def test_member_logits_are_each_member_on_each_view(models, x):
    z = inference.member_logits(models, x, "flip", batch_size=4)
    assert z.shape == (10, 2, 2, 7) and z.dtype == np.float64
    for m, model in enumerate(models):
        np.testing.assert_allclose(z[:, m, 0], _logits(model, x), atol=1e-5)
        np.testing.assert_allclose(z[:, m, 1], _logits(model, x[:, :, ::-1]), atol=1e-5)
    assert not np.allclose(z[:, 0, 0], z[:, 0, 1])  # the mirror is really a second view
    assert inference.member_logits(models, x, "none").shape == (10, 2, 1, 7)
    assert inference.member_logits(models, x[:0], "flip").shape == (0, 2, 2, 7)


def test_probs_are_the_mean_member_softmax_at_a_temperature(models, x):
    own = np.mean([m(v, training=False).numpy() for m in models for v in (x, x[:, :, ::-1])], axis=0)
    p = inference.predict_probs(models, x, tta="flip")
    assert p.shape == (10, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p, own, atol=1e-6)
    z = np.stack([_logits(m, v) for m in models for v in (x, x[:, :, ::-1])]).astype(np.float64) / 2.5
    hot = np.mean(np.exp(z) / np.exp(z).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(inference.predict_probs(models, x, tta="flip", temperature=2.5), hot, atol=1e-6)
    with pytest.raises(inference.KerasInferenceError, match="unknown TTA 'rot'; choose from none, flip"):
        inference.predict_probs(models, x, tta="rot")
    with pytest.raises(inference.KerasInferenceError, match="temperature must be a positive number"):
        inference.predict_probs(models, x, temperature=0.0)


def test_reference_saliency_is_the_gradient_of_the_mean_logit(models, x):
    cls = np.arange(len(x)) % 7
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        subs = [keras.Model(m.inputs[0], m.get_layer("logits").output) for m in models]
        views = [xt, tf.reverse(xt, [2])]
        z = tf.add_n([s(v, training=False) for s in subs for v in views]) / 4.0
        score = tf.reduce_sum(z * tf.one_hot(cls, 7), axis=1)
    ref = tape.gradient(score, xt).numpy()
    got = inference.reference_saliency(models, x, cls, tta="flip", batch_size=3)
    assert got.shape == (10, 48, 48, 1) and np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


def test_load_models_reads_a_run_in_float32_and_names_a_bad_file(models, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        mp = build_model(ModelConfig(filters=4, blocks=2, convs_per_block=1, units=8))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mp.save(tmp_path / "mp.keras")
    (loaded,) = inference.load_models(tmp_path / "mp.keras")
    assert all(l.compute_dtype == "float32" for l in loaded.layers)
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(inference.KerasInferenceError, match=r"bad.keras: not a Keras model file"):
        inference.load_model(tmp_path / "bad.keras")
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(inference.KerasInferenceError, match=r"dir.keras: a directory, not a .keras file"):
        inference.load_model(tmp_path / "dir.keras")
    with pytest.raises(inference.KerasInferenceError, match=r"gone.keras: not found"):
        inference.load_model(tmp_path / "gone.keras")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:  # a zip archive, but not a Keras model
        z.writestr("readme.txt", "hello")
    with pytest.raises(inference.KerasInferenceError, match=r"other.keras: cannot load the Keras model"):
        inference.load_model(tmp_path / "other.keras")
