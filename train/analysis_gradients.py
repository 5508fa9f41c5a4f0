"""TensorFlow gradients behind the analysis suite: saliency, filter and class visualisation, FGSM.

Models take raw 0..255 pixels, so every step size and epsilon here is in pixel units
(epsilon e/255 in [0, 1] units is e here) and every image is clipped to [0, 255].
Ensembles are handled as the mean of member logits (saliency, class maximisation) or the mean of
member softmax (adversarial loss, predictions), the same definitions the exporter uses.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fer_runtime.labels import IMAGE_SIZE, NUM_CLASSES

_RMS_EPS = 1e-8


def _tf():
    import tensorflow as tf

    return tf


def _image_spec():
    tf = _tf()
    return tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32)


def logits_models(models: Sequence[Any]) -> list[Any]:
    """Sub-models from each member's input to its ``logits`` layer (pre-softmax scores)."""
    import keras

    from fer_train.analysis_inputs import AnalysisError

    out = []
    for m in models:
        names = [l.name for l in m.layers]
        if "logits" not in names:
            raise AnalysisError(f"model {m.name!r} has no layer named 'logits'; layers: {', '.join(names)}")
        out.append(keras.Model(m.inputs[0], m.get_layer("logits").output, name=f"{m.name}_logits"))
    return out


def layer_model(model: Any, layer: str) -> Any:
    """A sub-model from the input to ``layer``'s output (the layer name must exist)."""
    import keras

    return keras.Model(model.inputs[0], model.get_layer(layer).output, name=f"{model.name}_{layer}")


def mean_logits_fn(models: Sequence[Any], tta: str = "none") -> Callable:
    """``f(x) -> [N,7]``: the mean member logits (also over the mirrored view with ``tta="flip"``)."""
    tf = _tf()
    subs = logits_models(models)

    def f(x):
        views = [x, tf.reverse(x, [2])] if tta == "flip" else [x]
        zs = [s(v, training=False) for s in subs for v in views]
        return tf.add_n(zs) / float(len(zs))
    return f


def _batched(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    n = len(arrays[0])
    outs = [fn(*(a[i:i + batch_size] for a in arrays)) for i in range(0, n, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def saliency_tf(models: Sequence[Any], x: np.ndarray, classes: np.ndarray, tta: str = "none",
                batch_size: int = 64) -> np.ndarray:
    """Raw saliency ``d mean_logit[class] / d image`` [N,48,48,1] by ``tf.GradientTape`` on the Keras models."""
    tf = _tf()
    f = mean_logits_fn(models, tta)

    @tf.function(input_signature=[_image_spec(), tf.TensorSpec([None], tf.int64)])
    def grad(xb, cb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            score = tf.reduce_sum(f(xb) * tf.one_hot(cb, NUM_CLASSES))
        return tape.gradient(score, xb)

    return _batched(lambda xb, cb: grad(tf.constant(xb), tf.constant(cb)).numpy(),
                    [np.asarray(x, np.float32), np.asarray(classes, np.int64)], batch_size)


def saliency_maps(grad: np.ndarray, smooth: float = 1.0) -> np.ndarray:
    """|gradient| [N,48,48], optionally Gaussian-smoothed (sigma in pixels), normalised to max 1 per image."""
    import cv2

    g = np.abs(np.asarray(grad, np.float32).reshape(len(grad), IMAGE_SIZE, IMAGE_SIZE))
    if smooth > 0:
        g = np.stack([cv2.GaussianBlur(m, (0, 0), smooth) for m in g]) if len(g) else g
    peak = g.reshape(len(g), -1).max(axis=1, initial=0.0)[:, None, None]
    return np.divide(g, peak, out=np.zeros_like(g), where=peak > 0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image cosine similarity of two [N,...] arrays (1.0 where both are all zero)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-30))


def _rms_normalise(tf, g):
    return g / (tf.sqrt(tf.reduce_mean(tf.square(g), axis=[1, 2, 3], keepdims=True)) + _RMS_EPS)


def filter_ascent(model: Any, layer: str, steps: int = 100, step_size: float = 1.0, seed: int = 0,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient ascent from white noise on the mean activation of every filter of ``layer``.

    Returns (images [F,48,48] in 0..255, initial mean activation [F], final mean activation [F]).
    Each step moves the image by ``step_size`` pixel units RMS along the normalised gradient.
    """
    tf = _tf()
    sub = layer_model(model, layer)
    n_filters = int(sub.output.shape[-1])

    @tf.function(input_signature=[_image_spec(), tf.TensorSpec([None], tf.int32)])
    def step(xb, fb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            a = sub(xb, training=False)
            act = tf.reduce_mean(tf.reduce_sum(a * tf.one_hot(fb, n_filters)[:, None, None, :], -1), axis=[1, 2])
            total = tf.reduce_sum(act)  # inside the tape, or the gradient is None
        return act, _rms_normalise(tf, tape.gradient(total, xb))

    rng = np.random.default_rng(seed)
    x_all = np.clip(128.0 + 20.0 * rng.standard_normal((n_filters, IMAGE_SIZE, IMAGE_SIZE, 1)), 0, 255).astype(np.float32)
    first = np.zeros(n_filters, np.float32)
    last = np.zeros(n_filters, np.float32)
    for i in range(0, n_filters, batch_size):
        x = tf.constant(x_all[i:i + batch_size])
        f = tf.range(i, min(i + batch_size, n_filters), dtype=tf.int32)
        for s in range(steps):
            act, g = step(x, f)
            if s == 0:
                first[i:i + batch_size] = act.numpy()
            x = tf.clip_by_value(x + step_size * g, 0.0, 255.0)
        last[i:i + batch_size] = step(x, f)[0].numpy()
        x_all[i:i + batch_size] = x.numpy()
    return x_all[..., 0], first, last


def layer_outputs(model: Any, layer: str, image: np.ndarray) -> np.ndarray:
    """The feature maps [H,W,C] of ``layer`` for one raw 0..255 image [48,48,1] (inference mode)."""
    sub = layer_model(model, layer)
    return np.asarray(sub(np.asarray(image, np.float32)[None], training=False))[0]


def class_max(models: Sequence[Any], steps: int = 200, step_size: float = 1.5, blur_every: int = 4,
              blur_sigma: float = 0.7, jitter: int = 2, decay: float = 0.002, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each class, the input that maximises its mean logit, from gray noise.

    Regularised so that the result is more than adversarial noise: random jitter (shift by up to
    ``jitter`` pixels before each gradient), a Gaussian blur every ``blur_every`` steps, and a small
    ``decay`` of the image towards mid-gray. Returns (images [7,48,48] 0..255, logit trace [steps+1, 7]).
    """
    import cv2

    tf = _tf()
    f = mean_logits_fn(models)
    cls = tf.range(NUM_CLASSES, dtype=tf.int64)

    @tf.function(input_signature=[_image_spec()])
    def step(xb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            z = tf.reduce_sum(f(xb) * tf.one_hot(cls, NUM_CLASSES), -1)
            total = tf.reduce_sum(z)
        return z, _rms_normalise(tf, tape.gradient(total, xb))

    rng = np.random.default_rng(seed)
    x = np.clip(128.0 + 8.0 * rng.standard_normal((NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE, 1)), 0, 255).astype(np.float32)
    trace = []
    for s in range(steps):
        dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, 2)) if jitter > 0 else (0, 0)
        shifted = np.roll(x, (dy, dx), axis=(1, 2))
        z, g = step(tf.constant(shifted))
        trace.append(z.numpy())
        x = x + step_size * np.roll(g.numpy(), (-dy, -dx), axis=(1, 2))
        x = 128.0 + (x - 128.0) * (1.0 - decay)
        if blur_every > 0 and (s + 1) % blur_every == 0:
            x = np.stack([cv2.GaussianBlur(im[..., 0], (0, 0), blur_sigma)[..., None] for im in x])
        x = np.clip(x, 0.0, 255.0).astype(np.float32)
    trace.append(step(tf.constant(x))[0].numpy())
    return x[..., 0], np.asarray(trace)


def loss_gradient_fn(models: Sequence[Any]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``g(x, y) -> d CE / d x`` [N,48,48,1] of the ensemble's mean softmax (computed stably from logits)."""
    tf = _tf()
    subs = logits_models(models)
    log_m = float(np.log(len(subs)))

    @tf.function(input_signature=[_image_spec(), tf.TensorSpec([None], tf.int64)])
    def grad(xb, yb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            lp = tf.stack([tf.gather(tf.nn.log_softmax(s(xb, training=False)), yb, batch_dims=1) for s in subs])
            total = -tf.reduce_sum(tf.reduce_logsumexp(lp, axis=0) - log_m)
        return tape.gradient(total, xb)

    return lambda x, y: grad(tf.constant(np.asarray(x, np.float32)), tf.constant(np.asarray(y, np.int64))).numpy()


def fgsm(grad_fn: Callable, x: np.ndarray, y: np.ndarray, eps: float, batch_size: int = 128) -> np.ndarray:
    """Fast gradient sign method: ``clip(x + eps * sign(dCE/dx), 0, 255)``; ``eps`` in pixel units."""
    x = np.asarray(x, np.float32)
    if eps == 0:
        return x.copy()
    g = _batched(grad_fn, [x, y], batch_size)
    return np.clip(x + eps * np.sign(g), 0, 255).astype(np.float32)


def ifgsm(grad_fn: Callable, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 10,
          alpha: float | None = None, batch_size: int = 128) -> np.ndarray:
    """Iterative FGSM (BIM): ``steps`` sign steps of ``alpha`` (default eps/4), projected to the eps-ball and [0, 255]."""
    x = np.asarray(x, np.float32)
    if eps == 0:
        return x.copy()
    alpha = eps / 4.0 if alpha is None else alpha
    adv = x.copy()
    for _ in range(steps):
        g = _batched(grad_fn, [adv, y], batch_size)
        adv = np.clip(np.clip(adv + alpha * np.sign(g), x - eps, x + eps), 0, 255).astype(np.float32)
    return adv
