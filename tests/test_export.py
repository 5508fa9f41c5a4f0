"""The ONNX exporter: forward and saliency graphs against Keras/TF, ensembles, refusals, manifest, CLI.

References in this file are computed independently of ``fer_export`` (Keras sub-models and
TF's own GradientTape), so a wrong twin, graph or verifier makes these tests fail.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fer_export import convert, graphs, twin  # noqa: E402
from fer_export.cli import app  # noqa: E402
from fer_export.errors import ExportError  # noqa: E402
from fer_export.exporter import export_models  # noqa: E402
from fer_export.members import load_member, recorded_accuracy  # noqa: E402
from fer_export.verify import saliency_agreement, verify_export  # noqa: E402
from fer_runtime.manifest import FORWARD_OUTPUTS, SALIENCY_OUTPUTS  # noqa: E402
from fer_runtime.labels import LABELS  # noqa: E402
from fer_runtime.manifest import read_manifest  # noqa: E402
from fer_train.data import load_kaggle_csv  # noqa: E402
from fer_train.models import ModelConfig, build_model  # noqa: E402

from bench_script import load_bench  # noqa: E402  (tests/bench_script.py)

tf.get_logger().setLevel("ERROR")

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"


# ------------------------------------------------------------------------------------ helpers

def randomize(model: keras.Model, seed: int) -> keras.Model:
    """Give BN non-trivial moving stats/affine params and PReLU mixed-sign slopes, so both are really tested."""
    rng = np.random.default_rng(seed)
    for l in model.layers:
        name = type(l).__name__
        if name == "BatchNormalization":
            n = l.moving_mean.shape[0]
            l.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3.0, n)])
        elif name == "PReLU":
            l.set_weights([rng.uniform(-0.3, 0.6, l.alpha.shape)])
        elif name in ("Conv2D", "Dense") and l.use_bias:
            l.set_weights([l.kernel.numpy(), rng.normal(0, 0.1, l.bias.shape)])
    return model


def tiny(seed: int = 0, **kw) -> keras.Model:
    cfg = dict(filters=4, blocks=2, convs_per_block=1, units=8)
    cfg.update(kw)
    keras.utils.set_random_seed(seed)
    return randomize(build_model(ModelConfig(**cfg)), seed)


def images(n_real: int = 24, seed: int = 0) -> np.ndarray:
    """Real fixture faces, uniform noise, and flat images (max-pool ties)."""
    real = load_kaggle_csv(FIX)["PublicTest"].x[:n_real].astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (3, 48, 48, 1)).astype(np.float32)
    flat = np.stack([np.zeros((48, 48, 1)), np.full((48, 48, 1), 200.0)]).astype(np.float32)
    return np.concatenate([real, noise, flat])


def ref_views(x, tta="none"):
    """The TTA views, written independently of fer_runtime.tta: the image, its mirror, and five 44x44
    crops (centre, then the corners) resized back by tf.image.resize, each followed by its mirror."""
    xt = tf.convert_to_tensor(x)
    if tta == "none":
        return [xt]
    bases = [xt]
    if tta == "crops":
        bases += [tf.image.resize(xt[:, r:r + 44, c:c + 44, :], [48, 48]) for r, c in [(2, 2), (0, 0), (0, 4), (4, 0), (4, 4)]]
    return [v for b in bases for v in (b, tf.reverse(b, [2]))]


def ref_outputs(models, x, temperature=1.0, tta="none"):
    """Independent reference: mean member softmax(logits/T) and mean logits over members (and the TTA views)."""
    views = ref_views(x, tta)
    ps, zs = [], []
    for m in models:
        sub = keras.Model(m.inputs[0], m.get_layer("logits").output)
        for v in views:
            z = sub(v, training=False).numpy().astype(np.float64)
            zs.append(z)
            if temperature == 1.0:
                ps.append(m(v, training=False).numpy().astype(np.float64))
            else:
                e = np.exp((z - z.max(1, keepdims=True)) / temperature)
                ps.append(e / e.sum(1, keepdims=True))
    return np.mean(ps, 0), np.mean(zs, 0)


def ref_saliency(models, x, cls, tta="none"):
    """TF's own gradient of the mean member logit of class ``cls[i]`` w.r.t. image i."""
    subs = [keras.Model(m.inputs[0], m.get_layer("logits").output) for m in models]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        views = ref_views(xt, tta)
        z = tf.add_n([s(v, training=False) for s in subs for v in views]) / (len(subs) * len(views))
        score = tf.reduce_sum(z * tf.one_hot(cls, 7), axis=1)
    return tape.gradient(score, xt).numpy()


def sessions_for(models, temperature=1.0, tta="none"):
    fwd = convert.to_onnx(graphs.make_forward_fn(models, temperature, tta), 17, "forward")
    sal = convert.to_onnx(graphs.make_saliency_fn(models, temperature, tta), 17, "saliency")
    convert.order_outputs(fwd, FORWARD_OUTPUTS)
    convert.order_outputs(sal, SALIENCY_OUTPUTS)
    fs = convert.check_onnx_bytes(fwd.SerializeToString(), "fwd", ["image"], FORWARD_OUTPUTS)
    ss = convert.check_onnx_bytes(sal.SerializeToString(), "sal", ["image", "class"], SALIENCY_OUTPUTS)
    return fs, ss


def assert_saliency_close(got, ref):
    g = got.reshape(len(got), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    cos = (g * r).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1))
    # A near-tie (a max-pool window's top two within ~1e-7, or a pre-activation that close to 0) can
    # resolve differently under float rounding and move a little gradient: allow that in the worst
    # image (the spec's 0.999) but require near-identity typically.
    assert cos.min() >= 0.999 and np.median(cos) >= 0.99999, cos
    scale = np.abs(r).max(1, keepdims=True)
    rel = np.median(np.abs(g - r) / np.maximum(np.abs(r), 1e-6 * scale), axis=1)
    assert rel.max() <= 1e-4, rel


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- twin ops in TF

@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 7, 5, 2)])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_twins_match_tf_gradients_including_ties_and_odd_sizes(shape, pool):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, shape).astype(np.float32)  # few distinct values: many ties in 2x2 windows
    x[0, :4, :4, 0] = 1.0  # a fully tied region
    dy = rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32)
    native = tf.nn.max_pool2d if pool == "max" else tf.nn.avg_pool2d
    mine = twin.max_pool2 if pool == "max" else twin.avg_pool2
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as t:
        t.watch(xt)
        a = native(xt, 2, 2, "VALID")
        b = mine(xt)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(t.gradient(b, xt, output_gradients=dy).numpy(),
                               t.gradient(a, xt, output_gradients=dy).numpy(), atol=1e-7)


# --------------------------------------------------- single models: every activation, pool, head

CASES = {
    "relu-max-flatten": dict(cnn_activation="relu", dnn_activation="selu", pool="max", head="flatten"),
    "leaky-avg-gap": dict(cnn_activation="leakyrelu", dnn_activation="elu", pool="avg", head="gap", blocks=3),
    "elu1-max-gap-5blocks": dict(cnn_activation="elu", cnn_activation_alpha=1.0, dnn_activation="prelu",
                                 pool="max", head="gap", blocks=5),
    "prelu-avg-flatten": dict(cnn_activation="prelu", dnn_activation="leakyrelu", pool="avg", head="flatten"),
    "selu-max-flatten-nobn": dict(cnn_activation="selu", dnn_activation="relu", pool="max", head="flatten",
                                  batch_norm=False, kernel_size=5),
    # residual joins (Add twin): projection shortcuts where the channels change, identity ones where they do not
    "resnet-relu-max-flatten": dict(arch="resnet", convs_per_block=4, cnn_activation="relu", pool="max"),
    "resnet-leaky-avg-gap": dict(arch="resnet", convs_per_block=2, cnn_activation="leakyrelu", pool="avg",
                                 head="gap", blocks=3),
    "resnet-elu-max-gap-nobn": dict(arch="resnet", convs_per_block=2, cnn_activation="elu", pool="max", head="gap",
                                    batch_norm=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_model_onnx_matches_keras_and_tf_gradient(case):
    m = tiny(seed=len(case), **CASES[case])
    x = images()
    cls = (np.arange(len(x)) % 7).astype(np.int64)
    fs, ss = sessions_for([m])
    p_ref, z_ref = ref_outputs([m], x)
    g_ref = ref_saliency([m], x, cls)
    p, z = fs.run(["probs", "logits"], {"image": x})
    ps, g = ss.run(["probs", "saliency"], {"image": x, "class": cls})
    assert p.shape == (len(x), 7) and g.shape == x.shape
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    np.testing.assert_allclose(ps, p_ref, atol=1e-5)
    np.testing.assert_allclose(z, z_ref, atol=1e-4 * max(1.0, np.abs(z_ref).max()))
    assert_saliency_close(g, g_ref)
    # The exporter's own verifier agrees, and its report reflects the numbers.
    rep = verify_export(fs, ss, [m], x, real_images=24)
    assert rep.forward_prob_max_abs < 1e-5 and rep.saliency_min_cosine >= 0.999 and rep.saliency_worst_median_rel_err < 1e-4


def test_input_scaling_is_folded_into_the_first_convolution_only_without_offset():
    """x/255 would cost a pass over every image: the first kernel absorbs it. An offset cannot be
    folded (the convolution's zero padding would no longer match) and stays a separate step."""
    m = tiny(seed=5)
    assert [s.kind for s in twin.plan_model(m)][:2] == ["conv", "relu"]
    fwd = convert.to_onnx(graphs.make_forward_fn([m]), 17, "forward")
    assert not [n.op_type for n in fwd.graph.node if "image" in n.input and n.op_type in ("Mul", "Add")]
    fs, ss = sessions_for([m])  # the folded kernel keeps both graphs exact
    x = images()
    cls = (np.arange(len(x)) % 7).astype(np.int64)
    np.testing.assert_allclose(fs.run(["probs"], {"image": x})[0], ref_outputs([m], x)[0], atol=1e-5)
    assert_saliency_close(ss.run(["saliency"], {"image": x, "class": cls})[0], ref_saliency([m], x, cls))

    inp = keras.Input((48, 48, 1), name="image")
    y = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inp)
    y = layers.Conv2D(3, 3, padding="same", name="conv", activation="relu")(y)
    y = layers.Dense(7, name="logits")(layers.Flatten(name="flatten")(y))
    shifted = randomize(keras.Model(inp, layers.Activation("softmax", name="probs")(y)), 6)
    assert [s.kind for s in twin.plan_model(shifted)][:2] == ["rescaling", "conv"]
    z_ref = keras.Model(shifted.inputs[0], shifted.get_layer("logits").output)(x).numpy()
    np.testing.assert_allclose(twin.logits_fn(shifted)(tf.constant(x)).numpy(), z_ref, atol=1e-4 * np.abs(z_ref).max())


def test_crop_tta_graphs_match_keras_on_resized_crops_and_tf_gradient():
    """TTA crops: 12 views (image, five 44x44 crops resized to 48, each with its mirror) in both graphs."""
    models = [tiny(seed=21), tiny(seed=22, cnn_activation="elu", pool="avg")]
    # Flat images stay exactly flat through the crop matrices at 0 and 128 (not at 200: rounding noise,
    # whose max-pool ties nothing can reproduce), so the gray one here is the exporter's 128.
    x = np.concatenate([images(12, seed=3)[:-1], np.full((1, 48, 48, 1), 128.0, np.float32)])
    cls = (np.arange(len(x)) * 5 % 7).astype(np.int64)
    fs, ss = sessions_for(models, temperature=1.5, tta="crops")
    p_ref, z_ref = ref_outputs(models, x, 1.5, "crops")
    p, z, mp = fs.run(["probs", "logits", "member_probs"], {"image": x})
    ps, g = ss.run(["probs", "saliency"], {"image": x, "class": cls})
    assert mp.shape == (len(x), 2, 12, 7)
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    np.testing.assert_allclose(ps, p_ref, atol=1e-5)
    np.testing.assert_allclose(z, z_ref, atol=1e-4 * max(1.0, np.abs(z_ref).max()))
    assert_saliency_close(g, ref_saliency(models, x, cls, "crops"))
    # Each view in its place (member 0): the image, its mirror, then each crop followed by its mirror.
    for v, view in enumerate(ref_views(x, "crops")):
        np.testing.assert_allclose(mp[:, 0, v], ref_outputs(models[:1], view.numpy(), 1.5)[0], atol=1e-5, err_msg=f"view {v}")
    # The flip-TTA result is the first two views; the crops change the answer.
    p_flip, _ = ref_outputs(models, x, 1.5, "flip")
    np.testing.assert_allclose(mp[:, :, :2].mean((1, 2)), p_flip, atol=1e-5)
    assert np.abs(p_flip - p_ref).max() > 1e-3
    rep = verify_export(fs, ss, models, x, temperature=1.5, tta="crops")
    assert rep.forward_prob_max_abs < 1e-5 and rep.saliency_min_cosine >= 0.999


def test_saliency_depends_on_the_requested_class():
    m = tiny(seed=3)
    x = images(4)
    _, ss = sessions_for([m])
    g0 = ss.run(["saliency"], {"image": x, "class": np.zeros(len(x), np.int64)})[0]
    g3 = ss.run(["saliency"], {"image": x, "class": np.full(len(x), 3, np.int64)})[0]
    assert_saliency_close(g3, ref_saliency([m], x, np.full(len(x), 3)))
    assert np.abs(g0 - g3).max() > 1e-3 * np.abs(g3).max()


# ------------------------------------------------------------------- verifier catches errors

class _Tampered:
    """Wraps an ORT session and corrupts one output, to prove the verifier looks at it."""

    def __init__(self, sess, output, fn):
        self.sess, self.output, self.fn = sess, output, fn

    def run(self, names, feeds):
        res = self.sess.run(names, feeds)
        return [self.fn(r) if n == self.output else r for n, r in zip(names, res)]


def test_verifier_rejects_wrong_probs_and_wrong_saliency():
    m = tiny(seed=5)
    x = images(8)
    fs, ss = sessions_for([m])
    verify_export(fs, ss, [m], x)  # the honest graphs pass
    with pytest.raises(ExportError, match="forward graph probabilities differ"):
        verify_export(_Tampered(fs, "probs", lambda p: p + 2e-4), ss, [m], x)
    with pytest.raises(ExportError, match="saliency differs from TF's gradient: median relative error"):
        verify_export(fs, _Tampered(ss, "saliency", lambda g: g[:, ::-1]), [m], x)  # upside down

    def negate_every_tenth(g):  # sparse, large errors: the median relative error stays 0, the cosine drops
        g = g.copy()
        g.reshape(len(g), -1)[:, ::10] *= -1
        return g
    with pytest.raises(ExportError, match=r"saliency differs from TF's gradient: cosine \S+ \(< 0.999\)"):
        verify_export(fs, _Tampered(ss, "saliency", negate_every_tenth), [m], x)
    with pytest.raises(ExportError, match="median relative error"):
        verify_export(fs, _Tampered(ss, "saliency", lambda g: g * 1.01), [m], x)  # 1% off: cosine still 1
    with pytest.raises(ExportError, match="member_probs differ"):
        verify_export(_Tampered(fs, "member_probs", lambda p: p[::-1]), ss, [m], x)  # rows swapped, probs intact
    with pytest.raises(ExportError, match="forward graph logits differ"):
        verify_export(_Tampered(fs, "logits", lambda z: z + 0.01), ss, [m], x)  # a shift the softmax cannot see
    # One image may be off by a rounding-decided ReLU kink (a few 1e-3, see fer_export.verify), not two,
    # and not by more than 1e-2.
    def scale_images(idx, f):
        def fn(g):
            g = g.copy()
            g[idx] *= f
            return g
        return fn
    rep = verify_export(fs, _Tampered(ss, "saliency", scale_images([0], 1.005)), [m], x)
    assert rep.saliency_rel_outliers == 1 and 4e-3 < rep.saliency_worst_median_rel_err < 6e-3
    with pytest.raises(ExportError, match="on 2 of"):
        verify_export(fs, _Tampered(ss, "saliency", scale_images([0, 1], 1.005)), [m], x)
    with pytest.raises(ExportError, match="median relative error"):
        verify_export(fs, _Tampered(ss, "saliency", scale_images([0], 1.05)), [m], x)
    rel, cos = saliency_agreement(np.zeros((1, 48, 48, 1)), np.zeros((1, 48, 48, 1)))
    assert rel[0] == 0 and cos[0] == 1


def test_without_real_faces_the_synthetic_images_still_reach_every_class():
    """An export with no data to verify on (--verify-count 0, or no fixture in an installed package) checks the
    saliency of class i % 7 on synthetic image i: there must be one for each class, Neutral included."""
    from fer_export.verify import verification_images

    m = tiny(seed=5)
    x, real, _ = verification_images(None)
    assert real == 0
    fs, ss = sessions_for([m])
    verify_export(fs, ss, [m], x)

    def zero_for_neutral(g):
        g = g.copy()
        g[6::7] = 0  # the rows that ask for class 6
        return g
    with pytest.raises(ExportError, match="saliency differs from TF's gradient"):
        verify_export(fs, _Tampered(ss, "saliency", zero_for_neutral), [m], x)


def test_verifier_allows_a_big_outlier_only_where_tf_disagrees_with_itself(monkeypatch):
    """A rounding-decided kink makes TF's batched gradient differ from the same image's lone gradient."""
    from fer_export import verify
    m = tiny(seed=5)
    x = images(8)
    fs, ss = sessions_for([m])
    honest = verify.inference.reference_saliency

    def batch_dependent(models, imgs, classes, tta="none", batch_size=64):
        g = honest(models, imgs, classes, tta, batch_size)
        if len(imgs) > 1:
            g[0] *= 1.05  # image 0 computed in a batch lands on the other side of a kink
        return g
    monkeypatch.setattr(verify.inference, "reference_saliency", batch_dependent)
    rep = verify_export(fs, ss, [m], x)  # ONNX matches TF's lone gradient of image 0
    assert rep.saliency_rel_outliers == 1 and rep.saliency_rel_explained == 1
    assert rep.saliency_worst_median_rel_err > 1e-2
    with pytest.raises(ExportError, match="unless TF disagrees with itself"):  # ONNX matches neither
        verify_export(fs, _Tampered(ss, "saliency", lambda g: np.concatenate([g[:1] * 0.95, g[1:]])), [m], x)


# ----------------------------------------------------------------------------- refusals

def _functional(build) -> keras.Model:
    inp = keras.Input((48, 48, 1), name="image")
    x = layers.Rescaling(1 / 255, name="scale")(inp)
    x = build(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(7, name="logits")(x)
    return keras.Model(inp, layers.Activation("softmax", name="probs")(x))


def _sliced(x):
    y = layers.Conv2D(2, 3, padding="same", name="res_conv")(x)
    return layers.Add(name="res_add")([x, y[..., :1]])  # the slice is an operation, not a layer


def _three_way(x):
    return layers.Add(name="add3")([x, layers.ReLU(name="r1")(x), layers.ReLU(name="r2")(x)])


REFUSALS = {
    "strided": (lambda x: layers.Conv2D(2, 3, strides=2, padding="same", name="b1c1_conv")(x),
                r"layer 'b1c1_conv' \(Conv2D\) has strides \(2, 2\); the saliency exporter supports stride 1 only"),
    "valid": (lambda x: layers.Conv2D(2, 3, padding="valid", name="vconv")(x), r"layer 'vconv' \(Conv2D\) has padding 'valid'"),
    "even": (lambda x: layers.Conv2D(2, 4, padding="same", name="econv")(x), r"layer 'econv' \(Conv2D\) has an even kernel"),
    "dilated": (lambda x: layers.Conv2D(2, 3, padding="same", dilation_rate=2, name="dconv")(x), r"layer 'dconv'.*dilation"),
    "pool3": (lambda x: layers.MaxPooling2D(3, name="p3")(x), r"layer 'p3' \(MaxPooling2D\) has pool_size \(3, 3\)"),
    "pool_same": (lambda x: layers.AveragePooling2D(2, padding="same", name="ps")(x), r"layer 'ps'.*padding 'same'"),
    "unknown": (lambda x: layers.LayerNormalization(name="ln")(x), r"layer 'ln' \(LayerNormalization\) is not a layer type"),
    "relu6": (lambda x: layers.ReLU(max_value=6.0, name="r6")(x), r"layer 'r6' \(ReLU\)"),
    "tanh": (lambda x: layers.Activation("tanh", name="th")(x), r"layer 'th' \(Activation\) uses activation 'tanh'"),
    "raw_op": (_sliced, r"layer 'res_add' \(Add\) reads a tensor that no layer of the model made"),
    "add3": (_three_way, r"layer 'add3' \(Add\) adds 3 tensors.*Add of two tensors of one shape only"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsupported_layer_is_named(case):
    build, pattern = REFUSALS[case]
    with pytest.raises(ExportError, match=pattern):
        twin.check_model(_functional(build))


def test_logits_must_feed_a_softmax_only():
    m = tiny()
    bad = keras.Model(m.inputs, layers.Dense(3, name="extra")(m.output))
    with pytest.raises(ExportError, match="softmax"):
        twin.check_model(bad)


def test_failed_export_leaves_out_untouched(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    (out / "manifest.json").write_text("keep me")
    (out / "__init__.py").write_text("")
    bad = _functional(REFUSALS["strided"][0])
    bad.save(tmp_path / "bad.keras")
    tiny(seed=2).save(tmp_path / "good.keras")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    # a member that would export, but the existing manifest is not valid: refused, and `out` is as it was
    with pytest.raises(ExportError, match=r"^cannot merge into the existing manifest: .*choose another --out$"):
        export_models([tmp_path / "good.keras"], out)
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    (out / "manifest.json").unlink()
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    with pytest.raises(ExportError, match=r"member 'bad'.*layer 'b1c1_conv' \(Conv2D\) has strides"):
        export_models([tmp_path / "bad.keras"], out)
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.keras", "good.keras", "models"]  # no temp dirs left


def test_a_member_of_the_wrong_input_shape_is_refused_before_it_is_run(tmp_path):
    """With --verify-data, a member without a recorded accuracy is scored on PublicTest: a 3-channel model must be
    refused by name first, not fail inside Keras."""
    inp = keras.Input((48, 48, 3), name="image")
    x = layers.Flatten(name="flatten")(layers.Rescaling(1 / 255, name="scale")(inp))
    rgb = keras.Model(inp, layers.Activation("softmax", name="probs")(layers.Dense(7, name="logits")(x)))
    rgb.save(tmp_path / "rgb.keras")
    with pytest.raises(ExportError, match=r"member 'rgb'.*takes input shape \(None, 48, 48, 3\)"):
        export_models([tmp_path / "rgb.keras"], tmp_path / "models", verify_data=FIX)
    assert not (tmp_path / "models").exists()


def test_mixed_precision_member_is_loaded_in_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = tiny(seed=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert m.get_layer("b1c1_conv").compute_dtype == "float16"
    m.save(tmp_path / "mp.keras")
    loaded = load_member(tmp_path / "mp.keras")
    assert all(l.compute_dtype == "float32" for l in loaded.layers)
    twin.check_model(loaded)
    x = images(4)
    assert loaded(x).dtype == "float32"
    np.testing.assert_allclose(loaded(x).numpy(), m(x).numpy().astype(np.float32), atol=5e-3)


# --------------------------------------------------------------- ensembles through the exporter

def _save_members(root: Path, configs: list[dict]) -> list[Path]:
    paths = []
    for i, kw in enumerate(configs):
        p = root / f"member{i}.keras"
        tiny(seed=10 + i, **kw).save(p)
        paths.append(p)
    return paths


ENSEMBLES = {
    "2-members": (dict(temperature=1.0, tta="none"), [dict(), dict(cnn_activation="elu", pool="avg")]),
    "3-members-flip-T2": (dict(temperature=2.0, tta="flip"),
                          [dict(arch="compact", cnn_activation="prelu"), dict(arch="dnn", units=16, dnn_activation="selu"),
                           dict(cnn_activation="leakyrelu", head="gap")]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both ensembles exported into one models dir (accurate, then a flip/T=2 variant), plus their members."""
    root = tmp_path_factory.mktemp("ens")
    out = root / "models"
    result = {}
    for variant, (name, (opts, configs)) in zip(["accurate", "calibrated"], ENSEMBLES.items()):
        (root / name).mkdir()
        paths = _save_members(root / name, configs)
        res = export_models(paths, out, variant=variant, verify_data=FIX, verify_count=30, **opts)
        result[name] = (res, [keras.models.load_model(p, compile=False) for p in paths], opts)
    return out, result


@pytest.mark.parametrize("name", list(ENSEMBLES))
def test_ensemble_matches_mean_of_members(exported, name):
    out, result = exported
    res, models, opts = result[name]
    x = images(16, seed=7)
    cls = (np.arange(len(x)) * 3 % 7).astype(np.int64)
    fs = ort.InferenceSession(str(res.forward), providers=["CPUExecutionProvider"])
    ss = ort.InferenceSession(str(res.saliency), providers=["CPUExecutionProvider"])
    p_ref, z_ref = ref_outputs(models, x, opts["temperature"], opts["tta"])
    p, z = fs.run(["probs", "logits"], {"image": x})
    ps, g = ss.run(["probs", "saliency"], {"image": x, "class": cls})
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    np.testing.assert_allclose(ps, p_ref, atol=1e-5)
    np.testing.assert_allclose(z, z_ref, atol=1e-4 * max(1.0, np.abs(z_ref).max()))
    assert_saliency_close(g, ref_saliency(models, x, cls, opts["tta"]))
    # The ensemble is not just one member.
    p0, _ = ref_outputs(models[:1], x, opts["temperature"], opts["tta"])
    assert np.abs(p0 - p_ref).max() > 1e-3
    rep = res.report
    assert rep.real_images == 30 and rep.forward_prob_max_abs <= 1e-4 and rep.saliency_min_cosine >= 0.999
    # Both graphs read one weights file, which holds each weight once (backward kernels are derived by ops).
    files = read_manifest(out).files
    assert files[res.forward.name].external == files[res.saliency.name].external == [res.weights.name]
    n_params = sum(m.count_params() for m in models)
    assert 0.9 * 4 * n_params <= res.weights.stat().st_size <= 4 * n_params + 64 * 64


def test_manifest_hashes_metadata_and_merge(exported):
    out, result = exported
    man = read_manifest(out)
    raw = json.loads((out / "manifest.json").read_text())
    assert man.default_variant == "accurate"
    assert set(man.variants) == {"accurate", "calibrated"}
    acc, cal = man.variants["accurate"], man.variants["calibrated"]
    assert (acc.forward, acc.saliency) == ("fer_ensemble.onnx", "fer_saliency.onnx")
    assert (cal.forward, cal.saliency) == ("fer_calibrated.onnx", "fer_calibrated_saliency.onnx")
    assert (cal.temperature, cal.tta, acc.temperature, acc.tta) == (2.0, "flip", 1.0, "none")
    assert man.labels == list(LABELS)
    assert "x/255" in man.input.preprocessing_in_graph and man.input.shape == [None, 48, 48, 1]
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "opset"} <= set(man.producer) and man.producer["opset"] == 17
    assert raw["created"].endswith("Z")
    assert sorted(man.files) == sorted(["fer_ensemble.onnx", "fer_saliency.onnx", "fer_weights.onnx_data",
                                        "fer_calibrated.onnx", "fer_calibrated_saliency.onnx",
                                        "fer_calibrated_weights.onnx_data"])
    assert man.files["fer_calibrated.onnx"].external == ["fer_calibrated_weights.onnx_data"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*man.files, "manifest.json"])
    for fname, entry in man.files.items():
        assert entry.sha256 == sha(out / fname) and entry.bytes == (out / fname).stat().st_size
    sal = man.files["fer_saliency.onnx"]
    assert [(t.name, t.shape, t.dtype) for t in sal.inputs] == [("image", [None, 48, 48, 1], "float32"), ("class", [None], "int64")]
    assert [(t.name, t.shape, t.dtype) for t in sal.outputs] == [("probs", [None, 7], "float32"),
                                                                 ("saliency", [None, 48, 48, 1], "float32")]
    assert [(t.name, t.shape) for t in man.files["fer_ensemble.onnx"].outputs] == [
        ("probs", [None, 7]), ("logits", [None, 7]), ("member_probs", [None, 2, 1, 7])]  # 2 members, 1 view
    assert man.files["fer_calibrated.onnx"].outputs[2].shape == [None, 3, 2, 7]  # 3 members, 2 views (flip)
    assert acc.calibration is None and cal.calibration is None  # temperatures given by hand
    assert raw["variants"]["accurate"]["calibration"] == {}  # stored as {} as before
    # Members: names, params, accuracy computed on the PublicTest rows of --verify-data.
    res, models, _ = result["2-members"]
    test = load_kaggle_csv(FIX)["PublicTest"]
    for entry, m in zip(acc.members, models):
        assert entry.params == m.count_params()
        want = float((m.predict(test.x.astype(np.float32), verbose=0).argmax(1) == test.y).mean())
        assert entry.accuracy_from == "computed" and entry.public_test_accuracy == pytest.approx(want, abs=1e-6)
    assert [e.name for e in acc.members] == ["member0", "member1"]
    # metadata_props in each file equal the manifest's view of its variant; created/producer are those
    # of the file's own export, which for the earlier variant predates the merged manifest's.
    for variant, v in man.variants.items():
        for fname, kind in ((v.forward, "forward"), (v.saliency, "saliency")):
            props = {p.key: p.value for p in onnx.load(str(out / fname)).metadata_props}
            assert props["fer.graph"] == kind
            want = man.metadata_props(variant)
            if variant == "accurate":
                assert props["fer.created"] <= want["fer.created"]
                want = {k: x for k, x in want.items() if k not in ("fer.created", "fer.producer")}
            for k, val in want.items():
                assert props[k] == val, (fname, k)
            assert json.loads(props["fer.labels"]) == list(LABELS)
            assert json.loads(props["fer.members"]) == raw["variants"][variant]["members"]


def test_reexporting_a_variant_replaces_it_and_keeps_the_others(exported, tmp_path):
    import shutil

    src, _ = exported
    out = tmp_path / "models"
    shutil.copytree(src, out)
    before = read_manifest(out)
    keep = {name: (out / name).read_bytes() for name in (before.variants["accurate"].forward,
                                                         before.variants["accurate"].saliency)}
    (tmp_path / "new").mkdir()
    paths = _save_members(tmp_path / "new", [dict(cnn_activation="elu")])
    export_models(paths, out, variant="calibrated", verify_data=FIX, verify_count=20, tta="none", temperature=1.5)
    man = read_manifest(out)
    cal = man.variants["calibrated"]
    assert set(man.variants) == {"accurate", "calibrated"} and man.default_variant == before.default_variant
    assert len(cal.members) == 1 and (cal.tta, cal.temperature) == ("none", 1.5)  # the new export, not the old
    assert (cal.forward, cal.saliency) == (before.variants["calibrated"].forward, before.variants["calibrated"].saliency)
    assert man.files[cal.forward].sha256 != before.files[cal.forward].sha256
    assert man.files[cal.forward].outputs[2].shape == [None, 1, 1, 7]
    for name, data in keep.items():  # the other variant's files are untouched and still verified
        assert (out / name).read_bytes() == data and man.files[name].sha256 == before.files[name].sha256
    for fname, entry in man.files.items():
        assert entry.sha256 == sha(out / fname)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())  # no stale or temp files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage folder left beside it


# ------------------------------------------------------------------------------------- CLI

def _run_dir(root: Path, name: str, seed: int, history: str | None = None, metrics: dict | None = None,
             validation: str = "PublicTest") -> Path:
    run = root / name
    run.mkdir()
    tiny(seed=seed).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"data": {"validation": validation}}))
    if history:
        (run / "history.csv").write_text(history)
    if metrics:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_recorded_accuracy_sources(tmp_path):
    hist = "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n1,2,0.3,1.9,0.31,0.001,5\n2,1.8,0.35,1.7,0.42,0.001,5\n3,1.7,0.4,1.8,0.40,0.001,5\n"
    a = _run_dir(tmp_path, "a", 1, history=hist)
    b = _run_dir(tmp_path, "b", 2, history=hist, metrics={"PublicTest": {"accuracy": 0.5555}})
    c = _run_dir(tmp_path, "c", 3, history=hist, validation="stratified 0.1 (seed 1234)")
    assert recorded_accuracy(a / "best.keras") == (pytest.approx(0.42), "history.csv")
    assert recorded_accuracy(b / "best.keras") == (pytest.approx(0.5555), "metrics.json")
    assert recorded_accuracy(c / "best.keras") == (None, "unknown")
    e = _run_dir(tmp_path, "e", 5, history=hist, metrics={"PublicTest": {"accuracy": 0.6, "members": ["swa.keras"]}})
    assert recorded_accuracy(e / "best.keras") == (pytest.approx(0.42), "history.csv")  # another file's figure
    f = _run_dir(tmp_path, "f", 6, history=hist, metrics={"PublicTest": {"accuracy": 0.6, "members": ["best.keras"]}})
    assert recorded_accuracy(f / "best.keras") == (pytest.approx(0.6), "metrics.json")
    bf16 = "".join(line + (",precision\n" if i == 0 else ",float32\n" if i == 1 else ",bfloat16\n")
                   for i, line in enumerate(hist.splitlines()))
    d = _run_dir(tmp_path, "d", 4, history=bf16)  # best epoch 2 was validated in bfloat16
    assert recorded_accuracy(d / "best.keras") == (None, "unknown")
    f32_val = "".join(line + (",val_precision\n" if i == 0 else ",float32\n" if i == 2 else ",\n")
                      for i, line in enumerate(bf16.splitlines()))
    h = _run_dir(tmp_path, "h", 11, history=f32_val)  # epoch 2 trained in bfloat16, validated in float32
    assert recorded_accuracy(h / "best.keras") == (pytest.approx(0.42), "history.csv")
    for k, damaged in enumerate(['[1, 2]', '{"PublicTest": {"accuracy": "high"}}', '{"PublicTest": 3', b"\xff\xfe"]):
        g = _run_dir(tmp_path, f"g{k}", 7 + k, history=hist)
        getattr(g / "metrics.json", "write_bytes" if isinstance(damaged, bytes) else "write_text")(damaged)
        assert recorded_accuracy(g / "best.keras") == (pytest.approx(0.42), "history.csv")  # the next source
    # a damaged config.json or history.csv: no recorded figure, and no traceback
    for k, (config, history) in enumerate([("[1, 2]", hist), ('{"data": "PublicTest"}', hist),
                                           (None, b"epoch,loss\n\xff\xfe\n")]):
        g = _run_dir(tmp_path, f"k{k}", 20 + k, history=hist)
        if config is not None:
            (g / "config.json").write_text(config)
        getattr(g / "history.csv", "write_bytes" if isinstance(history, bytes) else "write_text")(history)
        assert recorded_accuracy(g / "best.keras") == (None, "unknown")


def test_cli_exports_run_dirs_and_reports(tmp_path):
    hist = "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n1,2,0.3,1.9,0.375,0.001,5\n"
    r1 = _run_dir(tmp_path, "cnn_a", 21, history=hist)
    r2 = _run_dir(tmp_path, "cnn_b", 22, metrics={"PublicTest": {"accuracy": 0.4}})
    out = tmp_path / "models"
    res = CliRunner().invoke(app, [str(r1), str(r2), "--out", str(out), "--verify-count", "20"])
    assert res.exit_code == 0, res.output
    for word in ("forward probs: max |onnx - keras|", "cosine, worst", "fer_ensemble.onnx", "fer_saliency.onnx", "manifest.json"):
        assert word in res.output
    man = read_manifest(out)
    assert [(m.name, m.public_test_accuracy, m.accuracy_from) for m in man.variants["accurate"].members] == [
        ("cnn_a", 0.375, "history.csv"), ("cnn_b", 0.4, "metrics.json")]
    for fname, entry in man.files.items():
        assert entry.sha256 == sha(out / fname)


@pytest.mark.parametrize("args,message", [
    (["{tmp}/nope", "--out", "{tmp}/m"], "no such run"),
    (["{run}", "--out", "{tmp}/m", "--opset", "19"], "opset 19 is not supported"),
    (["{run}", "--out", "{tmp}/m", "--tta", "rotate"], "unknown TTA 'rotate'"),
    (["{run}", "--out", "{tmp}/m", "--temperature", "0"], "temperature must be a positive number"),
    (["{run}", "--out", "{tmp}/m", "--temperature", "warm"], "temperature must be a positive number or 'auto'"),
    (["{run}", "--out", "{tmp}/m", "--temperature", "auto"], "--verify-data must be a Kaggle"),
    (["{run}", "--out", "{tmp}/m", "--variant", "../evil"], "variant name"),
    (["{run}", "--out", "{tmp}/m", "--verify-data", "{tmp}/missing.csv"], "not found"),
    (["{run}", "--out", "{run}/best.keras/m"], "best.keras/m: cannot write there (not a directory"),  # before loading
])
def test_cli_bad_input_is_one_line_error(tmp_path, args, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"not a keras file")
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "m").exists()


def test_cli_corrupt_keras_file_is_one_line_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"not a keras file")
    res = CliRunner().invoke(app, [str(run), "--out", str(tmp_path / "m")])
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(lines) == 1 and lines[0].endswith("best.keras: not a Keras model file (a .keras file is a zip archive); "
                                                 "it is damaged or of another kind"), res.output
    assert not (tmp_path / "m").exists()


def test_cli_out_dot_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    """fer-export --out . from a checkout would stage a copy of all of it and swap the shell's folder away."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"not a keras file")  # not read: the refusal comes first
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [str(run), "--out", "."])
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--out .: cannot write there (it is the working folder or holds it" in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------- member_probs and the runtime

def test_member_probs_through_the_runtime(exported):
    """member_probs [N, M, V, 7]: mean is probs, each member is its own softmax(z/T), view 1 is the mirror."""
    from fer_runtime import Predictor

    out, result = exported
    res, models, opts = result["3-members-flip-T2"]
    x = images(10, seed=3)
    p = Predictor(out, model="calibrated", device="cpu", batch_size=4)
    mp = p.predict_members(x)
    assert mp.shape == (len(x), 3, 2, 7) and mp.dtype == np.float32
    np.testing.assert_allclose(mp.mean((1, 2)), p.predict(x), atol=1e-6)
    mirrored = p.predict_members(x[:, :, ::-1, :])
    np.testing.assert_allclose(mp[:, :, 1], mirrored[:, :, 0], atol=1e-5)
    np.testing.assert_allclose(mp[:, :, 0], mirrored[:, :, 1], atol=1e-5)
    for k, m in enumerate(models):
        np.testing.assert_allclose(mp[:, k, 0], ref_outputs([m], x, opts["temperature"])[0], atol=1e-5)
    assert p.predict_members([]).shape == (0, 3, 2, 7)
    plain = Predictor(out, device="cpu").predict_members(x)  # accurate: 2 members, no TTA
    assert plain.shape == (len(x), 2, 1, 7)


def test_old_forward_graph_without_member_probs(exported, tmp_path):
    """A model exported before member_probs still predicts; predict_members names the missing output."""
    import shutil

    from fer_runtime import MissingOutputError, Predictor
    from fer_runtime.manifest import write_manifest

    out, _ = exported
    old = Path(shutil.copytree(out, tmp_path / "old"))
    proto = onnx.load(str(old / "fer_ensemble.onnx"))
    keep = [o for o in proto.graph.output if o.name != "member_probs"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    data = proto.SerializeToString()
    (old / "fer_ensemble.onnx").write_bytes(data)
    man = read_manifest(old)
    entry = man.files["fer_ensemble.onnx"]
    man.files["fer_ensemble.onnx"] = dataclasses.replace(entry, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                                                         outputs=entry.outputs[:2])
    write_manifest(old, man)
    p = Predictor(old, device="cpu")
    x = images(4)
    np.testing.assert_allclose(p.predict(x), Predictor(out, device="cpu").predict(x), atol=1e-6)
    with pytest.raises(MissingOutputError, match="no 'member_probs' output"):
        p.predict_members(x)


def test_temperature_auto_is_fitted_on_public_test(tmp_path):
    """--temperature auto: T minimises the NLL of the flip-TTA ensemble on PublicTest, and the graph uses it."""
    from fer_export.calibrate import ensemble_nll, fit_temperature

    paths = _save_members(tmp_path, [dict(), dict(cnn_activation="elu")])
    models = [keras.models.load_model(p, compile=False) for p in paths]
    res = export_models(paths, tmp_path / "models", variant="fast", temperature="auto", tta="flip",
                        verify_data=FIX, verify_count=10)
    test = load_kaggle_csv(FIX)["PublicTest"]
    x = test.x.astype(np.float32)
    subs = [keras.Model(m.inputs[0], m.get_layer("logits").output) for m in models]
    terms = [s(v, training=False).numpy() for s in subs for v in (x, x[:, :, ::-1, :])]
    t = fit_temperature(terms, test.y)
    cal = read_manifest(tmp_path / "models").variants["fast"]
    assert cal.temperature == pytest.approx(t, rel=1e-3) and cal.temperature != 1.0
    c = cal.calibration
    assert c.fitted_on == "PublicTest" and c.images == len(test) and c.temperature == cal.temperature
    assert c.nll_after <= c.nll_before
    assert c.nll_before == pytest.approx(ensemble_nll(terms, test.y, 1.0), rel=1e-4)
    assert c.nll_after == pytest.approx(ensemble_nll(terms, test.y, t), rel=1e-4)
    assert 0 <= c.ece_after <= 1 and 0 <= c.ece_before <= 1
    assert "fitted on PublicTest" in cal.description
    fs = ort.InferenceSession(str(res.forward), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(fs.run(["probs"], {"image": x})[0], ref_outputs(models, x, cal.temperature, True)[0],
                               atol=1e-5)


def test_temperature_auto_needs_kaggle_public_test(tmp_path):
    import cv2

    m = tiny()
    m.save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="--verify-data must be a Kaggle"):
        export_models([tmp_path / "m.keras"], tmp_path / "models", temperature="auto")
    folders = tmp_path / "faces"
    for i, name in enumerate(LABELS):
        (folders / name.lower()).mkdir(parents=True)
        for j in range(2):
            cv2.imwrite(str(folders / name.lower() / f"{j}.png"), np.full((48, 48), 20 * i + j, np.uint8))
    with pytest.raises(ExportError, match="--verify-data must be a Kaggle"):
        export_models([tmp_path / "m.keras"], tmp_path / "models", temperature="auto", verify_data=folders)
    assert not (tmp_path / "models").exists()


# ------------------------------------------------------------------------- bench/accuracy.py

def _bench():
    return load_bench("accuracy")


def _accuracy_rows(printed: str) -> dict[str, list[list[str]]]:
    """The accuracy table's rows (cells) by variant, from the bench's printed Markdown."""
    rows: dict[str, list[list[str]]] = {}
    inside = False
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["variant", "model", "TTA"]:
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and not cells[0].startswith("-"):
            rows.setdefault(cells[0], []).append(cells)
    return rows


def test_accuracy_bench_recomputes_the_card_from_the_files(exported, tmp_path, capsys):
    """The bench's numbers equal an independent Keras computation; --card gets exactly the printed block."""
    bench = _bench()
    out, result = exported
    card = tmp_path / "README.md"
    card.write_text(f"# card\n\nbefore\n{bench.BEGIN}\nold numbers\n{bench.END}\nafter\n")
    assert bench.main(["--model-dir", str(out), "--data", str(FIX), "--card", str(card), "--png-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip()
    text = card.read_text()
    assert text == f"# card\n\nbefore\n{bench.BEGIN}\n{printed}\n{bench.END}\nafter\n"
    assert (tmp_path / "confusion_accurate.png").stat().st_size > 10_000 and (tmp_path / "confusion_calibrated.png").exists()
    # Independent numbers: member 1 of "calibrated" (T=2) with flip TTA, and the 2-member ensemble without TTA.
    data = load_kaggle_csv(FIX)
    _, models, opts = result["3-members-flip-T2"]
    _, models2, _ = result["2-members"]
    table = _accuracy_rows(printed)
    member_rows = [r for r in table["calibrated"] if r[1].startswith("member ")]
    member1_flip = member_rows[2 * 1 + 1]  # members in order, each without then with flip TTA
    ensemble2 = next(r for r in table["accurate"] if r[1] == "**ensemble of 2** (shipped)" and r[2] == "none")
    assert member1_flip[2] == "flip"
    for i, split in enumerate(bench.SPLITS):
        x, y = data[split].x.astype(np.float32), data[split].y
        acc1 = (ref_outputs(models[1:2], x, 2.0, True)[0].argmax(1) == y).mean()
        acc_ens = (ref_outputs(models2, x)[0].argmax(1) == y).mean()
        assert float(member1_flip[3 + 3 * i]) == pytest.approx(acc1, abs=5e-5), split
        assert float(ensemble2[3 + 3 * i]) == pytest.approx(acc_ens, abs=5e-5), split
    rows = [l for l in printed.splitlines() if l.startswith("| calibrated |")]
    assert len([r for r in rows if "member " in r]) == 3 * 2 and sum("(shipped)" in r for r in rows) == 1
    assert any("**ensemble of 3** (shipped) | flip" in r for r in rows)
    for fname, entry in read_manifest(out).files.items():
        assert entry.sha256 in printed and fname in printed
    # A card without markers is refused and left alone.
    card.write_text("no markers")
    assert bench.main(["--model-dir", str(out), "--data", str(FIX), "--card", str(card), "--png-dir", str(tmp_path)]) == 2
    assert card.read_text() == "no markers" and "must contain" in capsys.readouterr().err


def test_tf2onnx_error_lines_are_kept_to_their_first_line_and_empty_ones_dropped(capsys):
    import logging
    with convert._quiet_tf2onnx() as log:
        logging.getLogger("tf2onnx").error("")  # logging would print an IndexError traceback for this one
        logging.getLogger("tf2onnx").error("Unsupported ops: Counter({'FooGrad': 1})\ndetails")
        logging.getLogger("tf2onnx").warning("not collected")
    assert log.messages == ["Unsupported ops: Counter({'FooGrad': 1})"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["tf2onnx", "checker", "onnxruntime"])
def test_an_exception_without_text_still_gives_a_one_line_export_error(monkeypatch, stage):
    """tf2onnx, onnx.checker and onnxruntime can raise with an empty message; the error names the stage and the type."""
    from onnx import TensorProto, helper

    from fer_runtime import model_files

    def raise_empty(*args, **kwargs):
        raise RuntimeError()

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probs"])], "g", [x], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    if stage == "tf2onnx":
        import tf2onnx
        monkeypatch.setattr(tf2onnx.convert, "from_function", raise_empty)
        fn = tf.function(lambda t: t, input_signature=[tf.TensorSpec([None], tf.float32)])
        with pytest.raises(ExportError, match=r"^tf2onnx could not convert the forward graph: RuntimeError$"):
            convert.to_onnx(fn, 17, "forward")
        return
    convert.check_onnx_bytes(data, "g.onnx", ["image"], ["probs"])  # a valid graph: passes unpatched
    if stage == "checker":
        monkeypatch.setattr(onnx.checker, "check_model", raise_empty)
        pattern = r"^g\.onnx: onnx\.checker failed: RuntimeError$"
    else:
        monkeypatch.setattr(model_files.VerifiedGraph, "session", raise_empty)
        pattern = r"^g\.onnx: onnxruntime cannot load it: RuntimeError$"
    with pytest.raises(ExportError, match=pattern):
        convert.check_onnx_bytes(data, "g.onnx", ["image"], ["probs"])


def test_a_manifest_of_a_newer_minor_format_is_not_rewritten(tmp_path):
    """A newer fer-toolkit's keys would be dropped by a rewrite at this version: export and quantize refuse it."""
    import json
    import shutil

    from fer_export.quantize import quantize_variant
    from fer_runtime.errors import ManifestVersionError

    out = tmp_path / "models"
    out.mkdir()  # the manifest alone: both refuse before they open a model file
    shutil.copy(Path(__file__).parents[1] / "models" / "manifest.json", out)
    d = json.loads((out / "manifest.json").read_text())
    d.update(format_version="2.1", license="CC-BY-4.0")  # a key this version does not know
    (out / "manifest.json").write_text(json.dumps(d))
    before = (out / "manifest.json").read_bytes()
    tiny(seed=2).save(tmp_path / "good.keras")
    with pytest.raises(ExportError, match=r"format_version 2\.1 was written by a newer fer-toolkit"):
        export_models([tmp_path / "good.keras"], out)
    x = np.zeros((4, 48, 48, 1), np.float32)
    with pytest.raises(ManifestVersionError, match=r"format_version 2\.1 was written by a newer fer-toolkit"):
        quantize_variant(out, x, x, np.zeros(4, np.int64))
    assert (out / "manifest.json").read_bytes() == before
