"""Gradient twins: a Keras model's logits as TF ops whose backward pass uses forward ops only.

tf2onnx has no converter for TensorFlow's gradient kernels (ReluGrad, LeakyReluGrad, EluGrad,
MaxPoolGrad, Conv2DBackpropInput with a dynamic batch, BroadcastGradientArgs, ...). Each layer is
therefore re-implemented here with the same forward ops Keras uses and a ``tf.custom_gradient``
whose backward pass is written with ops that convert (Conv, Where, Mul, Reshape, ...):

* relu ``dy*(x>0)``; leaky relu and PReLU ``where(x>0, dy, a*dy)``; ELU ``where(x>0, dy, dy*(y+alpha))``;
  SELU ``where(x>0, scale*dy, dy*(y+scale*alpha))``;
* a stride-1 ``same`` convolution with an odd kernel: the convolution with the kernel flipped
  spatially and its in/out channels swapped;
* 2x2 max pooling: the gradient goes to the FIRST maximum of each window (row-major), as TF's
  MaxPoolGrad does; 2x2 average pooling spreads ``dy/4``;
* batch norm (inference), rescaling and dense layers are affine maps folded into constants; a batch
  norm right after a linear convolution is folded into that convolution's kernel and bias, and an
  input scaling (``Rescaling`` with no offset) right before a convolution into its kernel;
* flatten and global average pooling reshape/broadcast back to the static input shape;
* a residual ``Add`` of two tensors of one shape hands ``dy`` to both (TF's own gradient would reduce over
  broadcast axes with BroadcastGradientArgs); where a tensor feeds two branches, TF sums their gradients;
* the TTA views: a mirror mirrors ``dy``; a crop view ``R @ x @ C.T`` (two constant matrices) sends
  back ``R.T @ dy @ C``.

Weights are read once into numpy at planning time and enter the graph as constants, so the
traced functions are self-contained. Anything the twins cannot reproduce exactly is refused
up front with an :class:`ExportError` naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from fer_export.errors import ExportError
from fer_runtime.labels import IMAGE_SIZE, NUM_CLASSES
from fer_train import inference
from fer_train.models import batch_norm_affine

TensorFn = Callable[[tf.Tensor], tf.Tensor]

# tf.nn.selu's constants (the same ones Keras uses).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# Layers that are the identity at inference time.
IDENTITY_LAYERS = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
                             "GaussianDropout", "AlphaDropout", "ActivityRegularization"})


# ---------------------------------------------------------------------------------------------
# Twin ops. Each takes and returns float32 tensors; constants are numpy arrays.
# ---------------------------------------------------------------------------------------------

def relu(x: tf.Tensor) -> tf.Tensor:
    """ReLU; backward ``dy * (x > 0)``."""
    @tf.custom_gradient
    def f(x):
        return tf.nn.relu(x), lambda dy: dy * tf.cast(x > 0, dy.dtype)
    return f(x)


def leaky_relu(x: tf.Tensor, alpha: float) -> tf.Tensor:
    """Leaky ReLU with slope ``alpha`` below zero; backward ``where(x>0, dy, alpha*dy)``."""
    a = float(alpha)

    @tf.custom_gradient
    def f(x):
        return tf.nn.leaky_relu(x, alpha=a), lambda dy: tf.where(x > 0, dy, dy * a)
    return f(x)


def prelu(x: tf.Tensor, alpha: np.ndarray) -> tf.Tensor:
    """PReLU with a learned (broadcastable) slope; backward ``where(x>0, dy, alpha*dy)``."""
    @tf.custom_gradient
    def f(x):
        a = tf.constant(alpha, tf.float32)
        # Same values as Keras' relu(x) - alpha*relu(-x).
        return tf.where(x > 0, x, a * x), lambda dy: tf.where(x > 0, dy, dy * a)
    return f(x)


def elu(x: tf.Tensor, alpha: float = 1.0) -> tf.Tensor:
    """ELU as Keras computes it (``tf.nn.elu``, scaled by ``alpha`` below zero); backward ``where(x>0, dy, dy*(y+alpha))``."""
    a = float(alpha)

    @tf.custom_gradient
    def f(x):
        e = tf.nn.elu(x)
        y = e if a == 1.0 else tf.where(x > 0, e, a * e)
        return y, lambda dy: tf.where(x > 0, dy, dy * (y + a))
    return f(x)


def selu(x: tf.Tensor) -> tf.Tensor:
    """SELU = scale * elu(x, alpha); backward ``where(x>0, scale*dy, dy*(y+scale*alpha))``."""
    @tf.custom_gradient
    def f(x):
        y = tf.nn.selu(x)
        return y, lambda dy: tf.where(x > 0, dy * SELU_SCALE, dy * (y + SELU_SCALE * SELU_ALPHA))
    return f(x)


def conv2d_same(x: tf.Tensor, kernel: np.ndarray, bias: np.ndarray | None = None) -> tf.Tensor:
    """Stride-1 ``same`` convolution (odd kernel, HWIO) plus bias.

    Backward: the stride-1 ``same`` convolution of ``dy`` with the kernel rotated 180 degrees and
    its in/out channels swapped, which is exactly the transposed convolution for odd kernels.
    """
    back = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))

    @tf.custom_gradient
    def f(x):
        y = tf.nn.conv2d(x, tf.constant(kernel, tf.float32), 1, "SAME")
        if bias is not None:
            y = y + tf.constant(bias, tf.float32)  # AddV2, as Keras does (not BiasAdd)
        return y, lambda dy: tf.nn.conv2d(dy, tf.constant(back, tf.float32), 1, "SAME")
    return f(x)


def dense(x: tf.Tensor, kernel: np.ndarray, bias: np.ndarray | None = None) -> tf.Tensor:
    """``x @ kernel + bias`` on [N, units] inputs; backward ``dy @ kernel^T``."""
    @tf.custom_gradient
    def f(x):
        k = tf.constant(kernel, tf.float32)
        y = tf.matmul(x, k)
        if bias is not None:
            y = y + tf.constant(bias, tf.float32)
        return y, lambda dy: tf.matmul(dy, k, transpose_b=True)
    return f(x)


def affine(x: tf.Tensor, scale: np.ndarray | float, offset: np.ndarray | float) -> tf.Tensor:
    """``x * scale + offset`` with per-channel (or scalar) constants; backward ``dy * scale``.

    Used for Rescaling and for inference-mode batch normalization folded to scale/offset.
    """
    s = np.asarray(scale, np.float32)
    o = np.asarray(offset, np.float32)

    @tf.custom_gradient
    def f(x):
        sc = tf.constant(s)
        return x * sc + tf.constant(o), lambda dy: dy * sc
    return f(x)


def _pad_to(d: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Zero-pad a [N,h,w,C] gradient to [N,height,width,C] (rows/cols a VALID pool dropped)."""
    ph, pw = height - int(d.shape[1]), width - int(d.shape[2])
    if ph == 0 and pw == 0:
        return d
    return tf.pad(d, [[0, 0], [0, ph], [0, pw], [0, 0]])


def max_pool2(x: tf.Tensor) -> tf.Tensor:
    """2x2/2 VALID max pooling; backward routes ``dy`` to the first maximum of each window.

    "First" is row-major inside the window, which is what TF's MaxPoolGrad does on CPU. Built
    from 6-D reshapes, broadcasts and one ReduceMin, all of which convert to ONNX.
    """
    H, W, C = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    h, w = H // 2, W // 2
    pos = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 1, 2, 1)

    @tf.custom_gradient
    def f(x):
        y = tf.nn.max_pool2d(x, 2, 2, "VALID")

        def grad(dy):
            p = tf.constant(pos)
            x6 = tf.reshape(x[:, : 2 * h, : 2 * w, :], [-1, h, 2, w, 2, C])
            hit = tf.equal(x6, tf.reshape(y, [-1, h, 1, w, 1, C]))
            first = tf.reduce_min(tf.where(hit, p, 4.0), axis=[2, 4], keepdims=True)
            d6 = tf.where(tf.equal(p, first), tf.reshape(dy, [-1, h, 1, w, 1, C]), 0.0)
            return _pad_to(tf.reshape(d6, [-1, 2 * h, 2 * w, C]), H, W)
        return y, grad
    return f(x)


def avg_pool2(x: tf.Tensor) -> tf.Tensor:
    """2x2/2 VALID average pooling; backward spreads ``dy/4`` over each window (broadcast, no conv)."""
    H, W, C = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    h, w = H // 2, W // 2

    @tf.custom_gradient
    def f(x):
        y = tf.nn.avg_pool2d(x, 2, 2, "VALID")

        def grad(dy):
            d6 = tf.reshape(dy * 0.25, [-1, h, 1, w, 1, C]) * tf.ones([1, 1, 2, 1, 2, 1], dy.dtype)
            return _pad_to(tf.reshape(d6, [-1, 2 * h, 2 * w, C]), H, W)
        return y, grad
    return f(x)


def global_avg_pool(x: tf.Tensor) -> tf.Tensor:
    """Mean over H and W; backward broadcasts ``dy/(H*W)``.

    TF's own Mean gradient yields a dynamic-rank Reshape that upsets onnxruntime's NCHWc
    optimizer, so the broadcast is written out with static shapes.
    """
    H, W, C = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])

    @tf.custom_gradient
    def f(x):
        return tf.reduce_mean(x, axis=[1, 2]), \
            lambda dy: tf.ones_like(x) * tf.reshape(dy * (1.0 / (H * W)), [-1, 1, 1, C])
    return f(x)


def flatten(x: tf.Tensor) -> tf.Tensor:
    """Row-major flatten of [N,H,W,C] (channels-last, as Keras); backward reshapes back."""
    shape = [int(d) for d in x.shape[1:]]

    @tf.custom_gradient
    def f(x):
        return tf.reshape(x, [-1, int(np.prod(shape))]), lambda dy: tf.reshape(dy, [-1, *shape])
    return f(x)


def crop_view(x: tf.Tensor, rows: np.ndarray, cols: np.ndarray) -> tf.Tensor:
    """A crop TTA view ``rows @ x @ cols.T`` of [N,48,48,1] (:func:`fer_train.inference.crop_view`);
    backward ``rows.T @ dy @ cols``."""
    back_rows, back_cols = np.ascontiguousarray(rows.T), np.ascontiguousarray(cols.T)

    @tf.custom_gradient
    def f(x):
        # rows.T @ dy @ cols is itself a crop view, with the transposed matrices
        return inference.crop_view(x, rows, cols), lambda dy: inference.crop_view(dy, back_rows, back_cols)
    return f(x)


def flip_width(x: tf.Tensor) -> tf.Tensor:
    """Horizontal mirror of [N,H,W,C]; backward mirrors ``dy``."""
    @tf.custom_gradient
    def f(x):
        return x[:, :, ::-1, :], lambda dy: dy[:, :, ::-1, :]
    return f(x)


def add(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``a + b`` of one shape (a residual join); backward hands ``dy`` to both, with none of the broadcast
    reduction (BroadcastGradientArgs) TF's own gradient adds for a dynamic batch."""
    @tf.custom_gradient
    def f(a, b):
        return a + b, lambda dy: (dy, dy)
    return f(a, b)


# ---------------------------------------------------------------------------------------------
# Planning: Keras layers -> twin steps, refusing anything the twins do not reproduce.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TwinStep:
    """One Keras layer as a twin function of the values it reads: ``inputs`` index the values computed so far
    (0 is the image, ``i + 1`` step ``i``'s output); set by :func:`plan_model`."""

    layer: str
    kind: str
    fn: Callable[..., tf.Tensor]
    inputs: tuple[int, ...] = ()


def _refuse(layer: Any, what: str, supported: str) -> ExportError:
    return ExportError(f"layer {layer.name!r} ({type(layer).__name__}) {what}; the saliency exporter supports {supported}")


def _np(v: Any) -> np.ndarray:
    """A Keras variable or tensor as a float32 numpy array (read once, at planning time)."""
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)


def _activation_fn(layer: Any, fn: Any) -> TensorFn | None:
    """Twin of a Keras activation *function* (Activation layer or a layer's ``activation=``)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    if name == "linear":
        return None
    if name == "relu":
        return relu
    if name == "elu":
        return elu  # the string "elu" means alpha 1
    if name == "selu":
        return selu
    if name == "leaky_relu":
        return lambda x: leaky_relu(x, 0.2)  # keras.activations.leaky_relu's default slope
    raise _refuse(layer, f"uses activation {name!r}", "linear, relu, leaky_relu, elu, selu and PReLU (softmax only as the final layer)")


def _with_activation(layer: Any, core: TensorFn) -> TensorFn:
    act = _activation_fn(layer, layer.activation)
    return core if act is None else (lambda x: act(core(x)))


def _check_channels_last(layer: Any) -> None:
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise _refuse(layer, f"uses data_format {fmt!r}", "channels_last only")


def _check_conv(layer: Any) -> None:
    """Refuse a Conv2D the twin cannot reproduce exactly (only stride-1 ``same`` odd kernels)."""
    _check_channels_last(layer)
    if tuple(layer.strides) != (1, 1):
        raise _refuse(layer, f"has strides {tuple(layer.strides)}", "stride 1 only")
    if tuple(layer.dilation_rate) != (1, 1):
        raise _refuse(layer, f"has dilation_rate {tuple(layer.dilation_rate)}", "dilation 1 only")
    if layer.padding != "same":
        raise _refuse(layer, f"has padding {layer.padding!r}", "'same' padding only")
    if any(k % 2 == 0 for k in layer.kernel_size):
        raise _refuse(layer, f"has an even kernel size {tuple(layer.kernel_size)}", "odd kernel sizes only")
    if getattr(layer, "groups", 1) != 1:
        raise _refuse(layer, f"has groups={layer.groups}", "groups=1 only")


def _plan_conv(layer: Any, in_shape: tuple, in_scale: float = 1.0) -> TwinStep:
    """A Conv2D; ``in_scale`` is a scaling of its input folded into the kernel (zero padding stays zero)."""
    _check_conv(layer)
    k = _np(layer.kernel) * np.float32(in_scale)
    b = _np(layer.bias) if layer.use_bias else None
    return TwinStep(layer.name, "conv", _with_activation(layer, lambda x: conv2d_same(x, k, b)))


def _plan_pool(layer: Any, in_shape: tuple, fn: TensorFn) -> TwinStep:
    _check_channels_last(layer)
    if tuple(layer.pool_size) != (2, 2):
        raise _refuse(layer, f"has pool_size {tuple(layer.pool_size)}", "pool size 2 only")
    if tuple(layer.strides) != (2, 2):
        raise _refuse(layer, f"has strides {tuple(layer.strides)}", "pool stride 2 only")
    if layer.padding != "valid":
        raise _refuse(layer, f"has padding {layer.padding!r}", "'valid' pooling only")
    return TwinStep(layer.name, "pool", fn)


def _batch_norm_affine(layer: Any, in_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch norm as per-channel ``(scale, offset)`` (:func:`fer_train.models.batch_norm_affine`)."""
    try:
        return batch_norm_affine(layer, len(in_shape))
    except ValueError as e:
        raise _refuse(layer, str(e), "plain batch normalization of the last (channel) axis only") from None


def _plan_batch_norm(layer: Any, in_shape: tuple) -> TwinStep:
    a, c = _batch_norm_affine(layer, in_shape)
    return TwinStep(layer.name, "batch_norm", lambda x: affine(x, a, c))


def _plan_conv_bn(conv: Any, bn: Any, in_shape: tuple, in_scale: float = 1.0) -> TwinStep:
    """A linear Conv2D followed by BatchNormalization as ONE convolution with the BN folded in
    (and ``in_scale``, a scaling of its input, as in :func:`_plan_conv`).

    tf2onnx folds the BN scale into the forward kernel anyway; folding it here too makes the
    backward kernel an exact flip/transpose of the forward one, so :mod:`fer_export.share` can
    store it once.
    """
    _check_conv(conv)
    a, c = _batch_norm_affine(bn, tuple(conv.output.shape))
    k = _np(conv.kernel) * a * np.float32(in_scale)  # HWIO: scale each output channel (float32 * float32)
    b = (_np(conv.bias) * a + c) if conv.use_bias else c
    return TwinStep(f"{conv.name}+{bn.name}", "conv", lambda x: conv2d_same(x, k, b))


def _plan_layer(layer: Any, in_shape: tuple, in_scale: float = 1.0) -> TwinStep | None:
    """The twin step of one layer (None for inference no-ops); raises ExportError if unsupported.

    ``in_scale`` (a folded input scaling) applies to a Conv2D only.
    """
    t = type(layer).__name__
    if getattr(layer, "quantization_mode", None):
        raise _refuse(layer, f"is quantized ({layer.quantization_mode})", "float32 layers only")
    if t in IDENTITY_LAYERS:
        return None
    if t == "Rescaling":
        return TwinStep(layer.name, "rescaling", lambda x, s=_np(layer.scale), o=_np(layer.offset): affine(x, s, o))
    if t == "Conv2D":
        return _plan_conv(layer, in_shape, in_scale)
    if t == "Dense":
        if len(in_shape) != 2:
            raise _refuse(layer, f"is applied to a rank-{len(in_shape)} input", "Dense on flattened [N, features] inputs only")
        k = _np(layer.kernel)
        b = _np(layer.bias) if layer.use_bias else None
        return TwinStep(layer.name, "dense", _with_activation(layer, lambda x: dense(x, k, b)))
    if t == "BatchNormalization":
        return _plan_batch_norm(layer, in_shape)
    if t == "ReLU":
        if layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            raise _refuse(layer, "has max_value/negative_slope/threshold set", "plain ReLU only (use LeakyReLU for a slope)")
        return TwinStep(layer.name, "relu", relu)
    if t == "LeakyReLU":
        a = float(layer.negative_slope)
        return TwinStep(layer.name, "leaky_relu", lambda x: leaky_relu(x, a))
    if t == "ELU":
        a = float(layer.alpha)
        return TwinStep(layer.name, "elu", lambda x: elu(x, a))
    if t == "PReLU":
        a = _np(layer.alpha)
        return TwinStep(layer.name, "prelu", lambda x: prelu(x, a))
    if t == "Activation":
        act = _activation_fn(layer, layer.activation)
        return None if act is None else TwinStep(layer.name, "activation", act)
    if t == "MaxPooling2D":
        return _plan_pool(layer, in_shape, max_pool2)
    if t == "AveragePooling2D":
        return _plan_pool(layer, in_shape, avg_pool2)
    if t == "GlobalAveragePooling2D":
        _check_channels_last(layer)
        if layer.keepdims:
            raise _refuse(layer, "has keepdims=True", "keepdims=False only")
        return TwinStep(layer.name, "gap", global_avg_pool)
    if t == "Flatten":
        _check_channels_last(layer)
        return TwinStep(layer.name, "flatten", flatten) if len(in_shape) > 2 else None
    if t == "FakeQuantInt8":  # a quantization-aware run (fit --act-quant)
        raise ExportError(f"layer {layer.name!r} rounds activations for quantization-aware training; export the "
                          "run's `fer-train int8-grid RUN --out NEW` copy instead, which has no rounding layers")
    raise ExportError(f"layer {layer.name!r} ({t}) is not a layer type the saliency exporter can differentiate; "
                      "supported: Rescaling, Conv2D, Dense, BatchNormalization, ReLU, LeakyReLU, ELU, PReLU, "
                      "Activation, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Add, Dropout")


def logits_layer(model: Any) -> Any:
    """The model's logits layer by :func:`fer_train.inference.logits_layer`; ExportError if it has none."""
    try:
        return inference.logits_layer(model)
    except inference.KerasInferenceError as e:
        raise ExportError(str(e)) from None


def _inputs_of(layer: Any) -> list[Any]:
    """The tensors ``layer`` reads (one, or a list for a merge layer such as Add)."""
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _graph(model: Any) -> tuple[list[Any], dict[int, list[Any]]]:
    """The model's layers (without InputLayer) in Keras' topological order, and the layers reading each tensor (by
    ``id``); ExportError for a model with more than one input or a layer called more than once."""
    try:
        if len(model.inputs) != 1:
            raise ExportError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image input")
        layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
        readers: dict[int, list[Any]] = {}
        for l in layers:
            if len(l._inbound_nodes) != 1:
                raise ExportError(f"layer {l.name!r} ({type(l).__name__}) is called {len(l._inbound_nodes)} times; "
                                  "the saliency exporter supports layers used once")
            for t in _inputs_of(l):
                readers.setdefault(id(t), []).append(l)
    except (AttributeError, ValueError) as e:
        raise ExportError(f"model {model.name!r} is not a built functional model ({e})") from None
    return layers, readers


def plan_model(model: Any) -> list[TwinStep]:
    """Twin steps from the input to the logits of a Keras model, in an order where each step's inputs come first;
    ExportError names any unsupported layer.

    The model must take [N,48,48,1] float32 input, end in ``Dense(7)`` logits (linear) followed only by a softmax,
    and be built of supported layers, each called once: a chain, or with residual joins (``Add`` of two tensors).
    """
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ExportError(f"model {model.name!r} takes input shape {shape}; expected (None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1)")
    target = logits_layer(model)
    if type(target).__name__ != "Dense":
        raise ExportError(f"layer {target.name!r} ({type(target).__name__}) is the logits layer; expected Dense({NUM_CLASSES})")
    if getattr(target.activation, "__name__", "") != "linear" or int(target.units) != NUM_CLASSES:
        raise ExportError(f"layer {target.name!r} (Dense) must be Dense({NUM_CLASSES}) with a linear activation to give logits")
    layers, readers = _graph(model)
    tail = layers[layers.index(target) + 1:]
    if len(tail) != 1 or not inference.is_softmax(tail[0]):
        raise ExportError(f"model {model.name!r}: expected exactly one softmax Activation after {target.name!r}, "
                          f"found {[l.name for l in tail]}")
    chain = layers[: layers.index(target) + 1]
    for l in chain:
        if l.compute_dtype != "float32":
            raise ExportError(f"layer {l.name!r} ({type(l).__name__}) computes in {l.compute_dtype}; load members "
                              "with fer_train.inference.load_model (float32) first")
    steps: list[TwinStep] = []
    value = {id(model.inputs[0]): 0}  # tensor -> index of its twin value
    scaled: dict[int, float] = {}  # a pure Rescaling's output -> its factor, folded into the convolutions reading it
    folded: set[str] = set()  # batch norms folded into the convolution before them
    for l in chain:
        if l.name in folded:
            continue
        t, ins = type(l).__name__, _inputs_of(l)
        if any(id(x) not in value for x in ins):
            raise ExportError(f"layer {l.name!r} ({t}) reads a tensor that no layer of the model made (a slice or "
                              "another raw operation); the saliency exporter supports Keras layers only")
        idx = tuple(value[id(x)] for x in ins)
        users = readers.get(id(l.output), [])
        if t == "Add":
            if len(ins) != 2 or tuple(ins[0].shape) != tuple(ins[1].shape):
                raise _refuse(l, f"adds {len(ins)} tensors of shapes {[tuple(x.shape) for x in ins]}",
                              "Add of two tensors of one shape only")
            steps.append(TwinStep(l.name, "add", add, idx))
        elif len(ins) != 1:
            raise _refuse(l, f"reads {len(ins)} tensors", "Add as the only layer with several inputs")
        elif _pure_scale(l) and users and all(type(u).__name__ == "Conv2D" for u in users):
            value[id(l.output)] = idx[0]  # x/255 costs a pass over the image; the next kernels absorb it
            scaled[id(l.output)] = float(_np(l.scale))
            continue
        else:
            in_shape, in_scale = tuple(l.input.shape), scaled.get(id(ins[0]), 1.0)
            nxt = users[0] if len(users) == 1 else None
            if _foldable(l, nxt):
                steps.append(replace(_plan_conv_bn(l, nxt, in_shape, in_scale), inputs=idx))
                folded.add(nxt.name)
                value[id(nxt.output)] = len(steps)
                continue
            step = _plan_layer(l, in_shape, in_scale)
            if step is None:  # the identity at inference
                value[id(l.output)] = idx[0]
                continue
            steps.append(replace(step, inputs=idx))
        value[id(l.output)] = len(steps)
    return steps


def _pure_scale(layer: Any) -> bool:
    """A Rescaling by one scalar with a zero offset (foldable into a following convolution)."""
    return (type(layer).__name__ == "Rescaling" and np.size(_np(layer.scale)) == 1
            and not np.any(_np(layer.offset)))


def _foldable(layer: Any, nxt: Any) -> bool:
    """A Conv2D with a linear activation directly followed by BatchNormalization."""
    return (type(layer).__name__ == "Conv2D" and nxt is not None and type(nxt).__name__ == "BatchNormalization"
            and getattr(layer.activation, "__name__", "") == "linear" and not getattr(layer, "quantization_mode", None))


def check_model(model: Any) -> None:
    """Raise ExportError naming the first layer the twins cannot differentiate; return None if all are supported."""
    plan_model(model)


def logits_fn(model: Any) -> TensorFn:
    """A function image[N,48,48,1] (raw 0..255, float32) -> logits[N,7] built from gradient twins.

    Its values equal the model's ``logits`` layer output (up to float rounding) and its TF
    gradient uses only ops tf2onnx can convert.
    """
    steps = plan_model(model)

    def f(x: tf.Tensor) -> tf.Tensor:
        values = [x]
        for s in steps:
            values.append(s.fn(*(values[i] for i in s.inputs)))
        return values[-1]
    return f
