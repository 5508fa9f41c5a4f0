"""Pure model builders: ``build_model(config)`` returns an uncompiled Keras model.

All models take raw 0..255 pixels [N,48,48,1] (scaling is the first layer) and end in a Dense
layer named ``logits`` followed by a softmax named ``probs``. They use only layers the saliency
exporter can differentiate: stride-1 ``same`` convs with odd kernels, 2x2 max/average pool, the
five activations, batch norm, dropout, flatten, global average pool and dense.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from fer_runtime.labels import IMAGE_SIZE, NUM_CLASSES
from fer_runtime.manifest import IMAGE_INPUT, LOGITS, PROBS
from fer_train.settings import from_stored

ACTIVATIONS = ("relu", "leakyrelu", "elu", "prelu", "selu")
ARCHS = ("cnn", "compact", "dnn", "resnet")


@dataclass
class ModelConfig:
    """Every architecture knob. ``arch`` picks the builder; unrelated knobs are ignored."""

    arch: str = "cnn"
    filters: int = 32  # base count, doubled per block
    blocks: int = 4
    convs_per_block: int = 2
    kernel_size: int = 3
    cnn_activation: str = "relu"
    cnn_activation_alpha: float = 0.1
    pool: str = "max"
    conv_dropout: float = 0.25
    units: int = 256
    dense_layers: int = 1
    dnn_activation: str = "relu"
    dnn_activation_alpha: float = 0.1
    dense_dropout: float = 0.5
    batch_norm: bool = True
    head: str = "flatten"  # flatten | gap
    act_quant: bool = False  # round activations to int8 while training (fer_train.fake_quant); not exportable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """A stored model config (config.json's ``model``); ValueError naming any setting it does not have."""
        return from_stored(cls, d, "model")

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        for name in (self.cnn_activation, self.dnn_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.pool not in ("max", "avg"):
            raise ValueError(f"unknown pool {self.pool!r}; choose max or avg")
        if self.head not in ("flatten", "gap"):
            raise ValueError(f"unknown head {self.head!r}; choose flatten or gap")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel size must be odd, got {self.kernel_size}")
        if self.arch != "dnn" and not 1 <= self.blocks <= 5:
            raise ValueError(f"blocks must be 1..5 for 48x48 inputs, got {self.blocks}")
        if self.arch == "resnet" and (self.convs_per_block < 2 or self.convs_per_block % 2):
            raise ValueError(f"a resnet block is residual units of two convolutions: convs per block must be even "
                             f"and at least 2, got {self.convs_per_block}")
        if (self.arch == "resnet" and not self.batch_norm and self.cnn_activation == "leakyrelu"
                and self.cnn_activation_alpha != 0.2):
            # measured with TF 2.21 on CPU: graph mode differs from eager by 0.03 in the logits, 0 at alpha 0.2
            raise ValueError("a resnet with leakyrelu needs batch norm (or alpha 0.2): TensorFlow's CPU graph "
                             "optimizer fuses conv + bias + residual add + LeakyRelu with the default slope 0.2")

    def effective(self) -> "ModelConfig":
        """The validated configuration the builder really uses (``compact`` means a GAP head and no dense layers)."""
        self.validate()
        if self.arch == "compact":
            return replace(self, head="gap", dense_layers=0)
        return replace(self)




def _activation(name: str, alpha: float, name_prefix: str, conv: bool):
    from keras import layers

    n = f"{name_prefix}_{name}"
    if name == "relu":
        return layers.ReLU(name=n)
    if name == "leakyrelu":
        return layers.LeakyReLU(negative_slope=alpha, name=n)
    if name == "elu":
        return layers.ELU(alpha=alpha if alpha > 0 else 1.0, name=n)
    if name == "prelu":
        import keras

        return layers.PReLU(alpha_initializer=keras.initializers.Constant(alpha),
                            shared_axes=[1, 2] if conv else None, name=n)
    if name == "selu":
        return layers.Activation("selu", name=n)
    raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")


def _fake_quant(x, cfg: ModelConfig, name_prefix: str):
    """``x`` rounded as int8 activations are (``cfg.act_quant``), else ``x``."""
    if not cfg.act_quant:
        return x
    from fer_train.fake_quant import FakeQuantInt8

    return FakeQuantInt8(name=f"{name_prefix}_fq")(x)


def _head(x):
    from keras import layers

    x = layers.Dense(NUM_CLASSES, dtype="float32", name=LOGITS)(x)  # float32 under mixed precision too
    return layers.Activation("softmax", dtype="float32", name=PROBS)(x)


def _dense_stack(x, cfg: ModelConfig):
    from keras import layers

    for i in range(cfg.dense_layers):
        x = layers.Dense(cfg.units, use_bias=not cfg.batch_norm, name=f"dense{i + 1}")(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization(name=f"dense{i + 1}_bn")(x)
        x = _activation(cfg.dnn_activation, cfg.dnn_activation_alpha, f"dense{i + 1}", conv=False)(x)
        x = _fake_quant(x, cfg, f"dense{i + 1}")
        if cfg.dense_dropout > 0:
            x = layers.Dropout(cfg.dense_dropout, name=f"dense{i + 1}_dropout")(x)
    return x


def _inputs():
    import keras
    from keras import layers

    inp = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name=IMAGE_INPUT)
    return inp, layers.Rescaling(1.0 / 255.0, name="scale")(inp)


def _block_end(x, cfg: ModelConfig, b: int):
    """What ends conv block ``b`` (0-based): a 2x2 pool, then dropout when ``cfg.conv_dropout``."""
    from keras import layers

    pool = layers.MaxPooling2D if cfg.pool == "max" else layers.AveragePooling2D
    x = pool(2, name=f"b{b + 1}_pool")(x)
    return layers.Dropout(cfg.conv_dropout, name=f"b{b + 1}_dropout")(x) if cfg.conv_dropout > 0 else x


def _classifier(x, cfg: ModelConfig):
    """Feature maps to class probabilities: flatten (or global average pooling), the dense layers, the logits."""
    from keras import layers

    x = layers.Flatten(name="flatten")(x) if cfg.head == "flatten" else layers.GlobalAveragePooling2D(name="gap")(x)
    return _head(_dense_stack(x, cfg))


def build_cnn(cfg: ModelConfig):
    """The coursework CNN family: conv blocks with doubling filters, then dense layers.

    ``arch="compact"`` is the edge variant: the same conv blocks, then global average pooling
    straight into the logits (no dense layers), which is small and fast.
    """
    import keras
    from keras import layers

    cfg = cfg.effective()
    inp, x = _inputs()
    for b in range(cfg.blocks):
        f = cfg.filters * 2**b
        for c in range(cfg.convs_per_block):
            p = f"b{b + 1}c{c + 1}"
            x = layers.Conv2D(f, cfg.kernel_size, padding="same", use_bias=not cfg.batch_norm, name=f"{p}_conv")(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization(name=f"{p}_bn")(x)
            x = _activation(cfg.cnn_activation, cfg.cnn_activation_alpha, p, conv=True)(x)
            x = _fake_quant(x, cfg, p)
        x = _block_end(x, cfg, b)
    return keras.Model(inp, _classifier(x, cfg), name=cfg.arch)


def _conv_bn(x, filters: int, kernel_size: int, cfg: ModelConfig, p: str):
    """A stride-1 ``same`` convolution, then batch norm when ``cfg.batch_norm``; no activation."""
    from keras import layers

    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=not cfg.batch_norm, name=f"{p}_conv")(x)
    return layers.BatchNormalization(name=f"{p}_bn")(x) if cfg.batch_norm else x


def _residual_unit(x, filters: int, cfg: ModelConfig, p: str):
    """He et al.'s basic block: conv-bn-act, conv-bn, plus the shortcut (a 1x1 conv-bn where the channel count
    changes), then the activation."""
    from keras import layers

    shortcut = x if x.shape[-1] == filters else _conv_bn(x, filters, 1, cfg, f"{p}_proj")
    y = _conv_bn(x, filters, cfg.kernel_size, cfg, f"{p}a")
    y = _activation(cfg.cnn_activation, cfg.cnn_activation_alpha, f"{p}a", conv=True)(y)
    y = _fake_quant(y, cfg, f"{p}a")
    y = _conv_bn(y, filters, cfg.kernel_size, cfg, f"{p}b")
    x = layers.Add(name=f"{p}_add")([y, shortcut])
    x = _activation(cfg.cnn_activation, cfg.cnn_activation_alpha, p, conv=True)(x)
    return _fake_quant(x, cfg, p)


def build_resnet(cfg: ModelConfig):
    """A residual CNN for 48x48 faces: ``blocks`` stages of ``convs_per_block / 2`` residual units with doubling
    filters, a 2x2 pool after each stage (no strided convolutions), then the same head as ``cnn``.

    ``filters=32, blocks=4, convs_per_block=4`` is ResNet-18's layout of 16 convolutions in four stages.
    """
    import keras

    cfg = cfg.effective()
    inp, x = _inputs()
    for b in range(cfg.blocks):
        for u in range(cfg.convs_per_block // 2):
            x = _residual_unit(x, cfg.filters * 2**b, cfg, f"b{b + 1}u{u + 1}")
        x = _block_end(x, cfg, b)
    return keras.Model(inp, _classifier(x, cfg), name="resnet")


def build_dnn(cfg: ModelConfig):
    """The fully connected baseline: flatten, ``dense_layers`` x ``units``, logits."""
    import keras
    from keras import layers

    cfg.validate()
    inp, x = _inputs()
    x = layers.Flatten(name="flatten")(x)
    x = _dense_stack(x, cfg)
    return keras.Model(inp, _head(x), name="dnn")


def build_model(cfg: ModelConfig):
    """Build the model ``cfg.arch`` names (``cnn``, ``compact``, ``dnn`` or ``resnet``)."""
    cfg.validate()
    if cfg.arch == "dnn":
        return build_dnn(cfg)
    if cfg.arch == "resnet":
        return build_resnet(cfg)
    return build_cnn(cfg)


def producer(layer: Any) -> Any:
    """The layer whose output is ``layer``'s one input in a built functional model (the InputLayer for the image)."""
    return layer.input._keras_history.operation


def batch_norm_affine(layer: Any, rank: int) -> tuple[Any, Any]:
    """Inference-mode BatchNormalization ``layer`` (on inputs of ``rank`` dims) as per-channel float32
    ``(scale, offset)``: ``y = x * scale + offset``. ValueError (saying what the layer does) for a non-channel
    axis or batch renormalization.

    The same float32 ops as ``tf.nn.batch_normalization`` (what Keras calls), so the constants are bitwise
    Keras' own: ``scale = rsqrt(var + eps) * gamma``, ``offset = beta - mean * scale``.
    """
    import numpy as np
    import tensorflow as tf

    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    if axis is None or axis not in (-1, rank - 1):
        raise ValueError(f"normalizes axis {layer.axis}")
    if getattr(layer, "renorm", False):
        raise ValueError("uses batch renormalization")
    f32 = lambda v: tf.constant(np.asarray(v, np.float32))  # noqa: E731
    mean, var = f32(layer.moving_mean), f32(layer.moving_variance)
    scale = tf.math.rsqrt(var + float(layer.epsilon))
    if layer.scale:
        scale = scale * f32(layer.gamma)
    offset = (f32(layer.beta) if layer.center else tf.zeros_like(mean)) - mean * scale
    return scale.numpy(), offset.numpy()


def dnn_param_count(units: int, dense_layers: int, batch_norm: bool, alpha_params: bool = False) -> int:
    """Exact parameter count of :func:`build_dnn` for the given width (PReLU adds one alpha per unit)."""
    per_layer_extra = (4 if batch_norm else 0) + (1 if alpha_params else 0)
    bias = 0 if batch_norm else 1
    n, fan_in = 0, IMAGE_SIZE * IMAGE_SIZE
    for _ in range(dense_layers):
        n += fan_in * units + bias * units + per_layer_extra * units
        fan_in = units
    return n + fan_in * NUM_CLASSES + NUM_CLASSES


def match_dnn_units(target_params: int, cfg: ModelConfig) -> int:
    """Width of a ``cfg.dense_layers``-deep DNN whose parameter count is closest to ``target_params``."""
    if cfg.dense_layers < 1:
        raise ValueError("a parameter-matched DNN needs --dense-layers >= 1")
    prelu = cfg.dnn_activation == "prelu"
    lo, hi = 1, 1
    while dnn_param_count(hi, cfg.dense_layers, cfg.batch_norm, prelu) < target_params:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if dnn_param_count(mid, cfg.dense_layers, cfg.batch_norm, prelu) < target_params:
            lo = mid + 1
        else:
            hi = mid
    cands = [u for u in (lo - 1, lo) if u >= 1]
    best = min(cands, key=lambda u: abs(dnn_param_count(u, cfg.dense_layers, cfg.batch_norm, prelu) - target_params))
    got = dnn_param_count(best, cfg.dense_layers, cfg.batch_norm, prelu)
    if not math.isclose(got, target_params, rel_tol=0.05):
        raise ValueError(f"cannot match {target_params} params within 5% with {cfg.dense_layers} layers (closest {got})")
    return best


def all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, the layers of nested models included (depth first, each container before its own)."""
    out = [model]
    for layer in getattr(model, "layers", []):
        out.extend(all_layers(layer))
    return out
