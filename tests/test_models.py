"""Builders: parameter counts, the layer set the exporter supports, and DNN parameter matching."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

from fer_train.models import ACTIVATIONS, ModelConfig, build_model, dnn_param_count, match_dnn_units  # noqa: E402

ALLOWED = {"InputLayer", "Rescaling", "Conv2D", "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "PReLU",
           "Activation", "MaxPooling2D", "AveragePooling2D", "Dropout", "Flatten", "GlobalAveragePooling2D", "Dense"}


def test_cnn_parameter_count_by_hand():
    m = build_model(ModelConfig(filters=8, blocks=2, convs_per_block=1, units=16, dense_layers=1))
    # conv 3*3*1*8 + bn 4*8 + conv 3*3*8*16 + bn 4*16 + dense 12*12*16*16 + bn 4*16 + logits 16*7+7
    assert m.count_params() == 72 + 32 + 1152 + 64 + 36864 + 64 + 119


def test_convs_per_block_and_filter_doubling():
    m = build_model(ModelConfig(filters=4, blocks=3, convs_per_block=2, units=8))
    convs = [l for l in m.layers if type(l).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16]
    assert all(c.strides == (1, 1) and c.padding == "same" and c.kernel_size == (3, 3) for c in convs)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_layer_set_and_named_head(act, pool):
    m = build_model(ModelConfig(filters=4, blocks=2, cnn_activation=act, dnn_activation=act, pool=pool, units=8))
    kinds = {type(l).__name__ for l in m.layers}
    assert kinds <= ALLOWED, kinds - ALLOWED
    assert m.layers[-2].name == "logits" and m.layers[-1].name == "probs"
    assert m.layers[1].name == "scale"
    assert ("MaxPooling2D" if pool == "max" else "AveragePooling2D") in kinds
    x = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype("float32")
    p = np.asarray(m(x, training=False))
    assert p.shape == (3, 7) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_scaling_is_inside_the_model():
    m = build_model(ModelConfig(filters=4, blocks=1, units=8, batch_norm=False))
    scale = m.get_layer("scale")
    assert np.allclose(np.asarray(scale(np.full((1, 48, 48, 1), 255.0, "float32"))), 1.0)


def test_compact_is_gap_without_dense():
    m = build_model(ModelConfig(arch="compact", filters=8, blocks=3, dense_layers=2))
    kinds = [type(l).__name__ for l in m.layers]
    assert "GlobalAveragePooling2D" in kinds and "Flatten" not in kinds
    assert [l.name for l in m.layers if type(l).__name__ == "Dense"] == ["logits"]


@pytest.mark.parametrize("layers_, bn, act", [(1, True, "relu"), (2, False, "relu"), (3, True, "prelu")])
def test_dnn_param_formula_matches_keras(layers_, bn, act):
    cfg = ModelConfig(arch="dnn", units=37, dense_layers=layers_, batch_norm=bn, dnn_activation=act)
    assert build_model(cfg).count_params() == dnn_param_count(37, layers_, bn, act == "prelu")


@pytest.mark.parametrize("layers_", [1, 2])
def test_match_params_within_5_percent(layers_):
    cnn = build_model(ModelConfig(filters=16, blocks=3, units=128))
    target = cnn.count_params()
    cfg = ModelConfig(arch="dnn", dense_layers=layers_)
    cfg.units = match_dnn_units(target, cfg)
    got = build_model(cfg).count_params()
    assert abs(got - target) / target < 0.05


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        build_model(ModelConfig(cnn_activation="tanh"))
    with pytest.raises(ValueError, match="odd"):
        build_model(ModelConfig(kernel_size=4))


def test_resnet_units_shortcuts_and_layer_set():
    m = build_model(ModelConfig(arch="resnet", filters=4, blocks=2, convs_per_block=4, units=8))
    convs = {l.name: l for l in m.layers if type(l).__name__ == "Conv2D"}
    assert sorted(convs) == sorted([f"b{b}u{u}{k}_conv" for b in (1, 2) for u in (1, 2) for k in "ab"]
                                   + ["b1u1_proj_conv", "b2u1_proj_conv"])  # projections where the channels change
    assert convs["b2u1_proj_conv"].kernel_size == (1, 1) and convs["b2u1_proj_conv"].filters == 8
    assert [convs[f"b{b}u2a_conv"].filters for b in (1, 2)] == [4, 8]
    second = m.get_layer("b1u2_add").input  # an identity shortcut: the previous unit's output itself
    assert second[1] is m.get_layer("b1u1_relu").output and second[0] is m.get_layer("b1u2b_bn").output
    kinds = {type(l).__name__ for l in m.layers}
    assert kinds <= ALLOWED | {"Add"} and "Add" in kinds
    assert m.layers[-2].name == "logits" and m.layers[-1].name == "probs"
    with pytest.raises(ValueError, match="convs per block must be even"):
        build_model(ModelConfig(arch="resnet", convs_per_block=3))


def _graph_minus_eager(cfg: ModelConfig) -> float:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    m = build_model(cfg)
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype("float32")
    logits = keras.Model(m.inputs, m.get_layer("logits").output)
    return float(np.abs(tf.function(lambda t: logits(t, training=False))(x).numpy()
                        - logits(x, training=False).numpy()).max())


@pytest.mark.parametrize("kw", [dict(cnn_activation="leakyrelu"), dict(cnn_activation="relu", batch_norm=False),
                                dict(cnn_activation="elu", batch_norm=False)], ids=["leaky-bn", "relu", "elu"])
def test_resnet_graph_mode_computes_what_eager_does(kw):
    assert _graph_minus_eager(ModelConfig(arch="resnet", filters=4, blocks=2, units=8, **kw)) < 1e-4


def test_the_refused_resnet_config_is_one_tensorflow_miscomputes(monkeypatch):
    """resnet + leakyrelu without batch norm is refused because TF's graph optimizer fuses conv + bias + add +
    LeakyRelu with the default slope 0.2. If this test fails, TF computes it right now: drop the refusal."""
    cfg = ModelConfig(arch="resnet", filters=4, blocks=2, units=8, cnn_activation="leakyrelu", batch_norm=False)
    with pytest.raises(ValueError, match="needs batch norm"):
        build_model(cfg)
    monkeypatch.setattr(ModelConfig, "validate", lambda self: None)
    assert _graph_minus_eager(cfg) > 1e-3
    assert _graph_minus_eager(ModelConfig(**{**cfg.to_dict(), "cnn_activation_alpha": 0.2})) < 1e-4


def test_compact_config_is_recorded_as_built():
    cfg = ModelConfig(arch="compact", head="flatten", dense_layers=2)
    eff = cfg.effective()
    assert (eff.head, eff.dense_layers) == ("gap", 0) and (cfg.head, cfg.dense_layers) == ("flatten", 2)
    assert ModelConfig(arch="cnn", head="flatten", dense_layers=2).effective() == ModelConfig(arch="cnn", head="flatten", dense_layers=2)
    m = build_model(cfg)
    assert any(type(l).__name__ == "GlobalAveragePooling2D" for l in m.layers)
    assert not any(l.name.startswith("dense") for l in m.layers)


def test_batch_norm_inside_a_nested_model_is_found_by_swa_and_multiworker():
    import keras

    from fer_train import swa
    from fer_train.distribute import synchronize_batch_norm
    from fer_train.models import all_layers

    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn_in")], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="d")], name="outer")
    assert [layer.name for layer in all_layers(outer)] == ["outer", "inner", "bn_in", "d"]
    assert synchronize_batch_norm(outer) == 1 and inner.get_layer("bn_in").synchronized
    batch = np.full((8, 4), 3.0, np.float32)
    assert swa.recompute_batch_norm(outer, [batch]) == 1
    np.testing.assert_allclose(inner.get_layer("bn_in").moving_mean.numpy(), 3.0)
