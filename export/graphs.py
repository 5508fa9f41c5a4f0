"""TF functions for an ensemble: the exported forward and saliency graphs, and TF's own reference.

* :func:`make_forward_fn` and :func:`make_saliency_fn` are built from the gradient twins
  (:mod:`fer_export.twin`) and are what gets converted to ONNX.
* :func:`make_reference_saliency_fn` differentiates the ORIGINAL Keras models with TF's own
  gradients; it is the ground truth the export is verified against, and what analysis tools can
  call to compare TF saliency with the ONNX saliency graph.

Definitions shared by all of them, for an ensemble of M members and V views (V=2 with flip TTA):
``logits = mean over members and views of the member logits``;
``probs = mean over members and views of softmax(member logits / temperature)``;
``member_probs[n, m, v] = softmax(logits of member m on view v / temperature)`` ([N, M, V, 7]; view 0
is the image, view 1 its mirror), so ``probs = member_probs.mean((1, 2))``;
``saliency[n] = d logits[n, class[n]] / d image[n]`` (temperature does not enter it).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from fer_export import twin
from fer_export.errors import ExportError
from fer_runtime.labels import IMAGE_SIZE, NUM_CLASSES

TTA_MODES = ("none", "flip")
FORWARD_OUTPUTS = ("probs", "logits", "member_probs")  # graph output order of the forward file
SALIENCY_OUTPUTS = ("probs", "saliency")

IMAGE_SPEC = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name="image")
CLASS_SPEC = tf.TensorSpec([None], tf.int64, name="class")


def check_options(temperature: float, tta: str) -> None:
    """Raise ExportError for a non-positive temperature or an unknown TTA mode."""
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ExportError(f"temperature must be a positive number, got {temperature!r}")
    if tta not in TTA_MODES:
        raise ExportError(f"unknown TTA {tta!r}; choose from {', '.join(TTA_MODES)}")


def _member_logits(fns: Sequence[Callable], image: tf.Tensor, tta: str, flip: Callable) -> list[tf.Tensor]:
    views = [image, flip(image)] if tta == "flip" else [image]
    return [f(v) for f in fns for v in views]


def views_of(tta: str) -> int:
    """Number of TTA views the graphs average over (1, or 2 with flip)."""
    return 2 if tta == "flip" else 1


def _term_probs(zs: list[tf.Tensor], temperature: float) -> list[tf.Tensor]:
    if temperature != 1.0:
        zs = [z * (1.0 / temperature) for z in zs]
    return [tf.nn.softmax(z) for z in zs]


def _mean_probs(zs: list[tf.Tensor], temperature: float) -> tf.Tensor:
    return tf.add_n(_term_probs(zs, temperature)) * (1.0 / len(zs))


def make_forward_fn(models: Sequence[Any], temperature: float = 1.0, tta: str = "none") -> tf.types.experimental.GenericFunction:
    """``tf.function(image) -> {"probs": [N,7], "logits": [N,7], "member_probs": [N,M,V,7]}`` for an ensemble."""
    check_options(temperature, tta)
    fns = [twin.logits_fn(m) for m in models]
    shape = [-1, len(models), views_of(tta), NUM_CLASSES]

    @tf.function(input_signature=[IMAGE_SPEC])
    def forward(image):
        zs = _member_logits(fns, image, tta, twin.flip_width)
        ps = _term_probs(zs, temperature)  # member-major, view-minor: the order of the reshape below
        return {"probs": tf.add_n(ps) * (1.0 / len(ps)), "logits": tf.add_n(zs) * (1.0 / len(zs)),
                "member_probs": tf.reshape(tf.stack(ps, axis=1), shape)}
    return forward


def make_saliency_fn(models: Sequence[Any], temperature: float = 1.0, tta: str = "none") -> tf.types.experimental.GenericFunction:
    """``tf.function(image, class) -> {"probs": [N,7], "saliency": [N,48,48,1]}`` built from gradient twins.

    The backward pass is seeded with ``one_hot(class)/len(terms)`` per member logit, so no TF
    gradient op other than the twins' (and the tape's AddN) is emitted; the graph converts to ONNX.
    A class outside 0..6 gives an all-zero saliency in TF (callers should validate it).
    """
    check_options(temperature, tta)
    fns = [twin.logits_fn(m) for m in models]

    @tf.function(input_signature=[IMAGE_SPEC, CLASS_SPEC])
    def saliency(image, cls):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(image)
            zs = _member_logits(fns, image, tta, twin.flip_width)
        seed = tf.one_hot(cls, NUM_CLASSES, dtype=tf.float32) * (1.0 / len(zs))
        grad = tape.gradient(zs, image, output_gradients=[seed] * len(zs))
        return {"probs": _mean_probs(zs, temperature), "saliency": grad}
    return saliency


def keras_logits_models(models: Sequence[Any]) -> list[Any]:
    """Sub-models of the original Keras models that output their logits layer."""
    import keras

    return [keras.Model(m.inputs[0], twin.logits_layer(m).output, name=f"{m.name}_logits") for m in models]


def make_reference_saliency_fn(models: Sequence[Any], tta: str = "none") -> tf.types.experimental.GenericFunction:
    """``tf.function(image, class) -> saliency [N,48,48,1]`` using TF's own gradients of the ORIGINAL models.

    This is the ground truth the ONNX saliency graph is verified against (the score is the mean
    member logit of the class, averaged over TTA views like the exported graph).
    """
    check_options(1.0, tta)
    subs = keras_logits_models(models)

    @tf.function(input_signature=[IMAGE_SPEC, CLASS_SPEC])
    def reference(image, cls):
        with tf.GradientTape() as tape:
            tape.watch(image)
            zs = _member_logits([lambda v, s=s: s(v, training=False) for s in subs], image, tta,
                                lambda v: tf.reverse(v, [2]))
            score = tf.reduce_sum(tf.add_n(zs) / len(zs) * tf.one_hot(cls, NUM_CLASSES), axis=1)
        return tape.gradient(score, image)
    return reference


def keras_member_logits(models: Sequence[Any], images: np.ndarray, tta: str = "none",
                        batch_size: int = 128) -> np.ndarray:
    """Logits [N, M, V, 7] (float64) of the ORIGINAL Keras models on each TTA view (view 1 = mirrored)."""
    check_options(1.0, tta)
    subs = keras_logits_models(models)
    x_all = np.asarray(images, np.float32)
    views = views_of(tta)
    out = np.zeros((len(x_all), len(models), views, NUM_CLASSES), np.float64)
    for k, s in enumerate(subs):
        run = tf.function(lambda a, s=s: s(a, training=False), reduce_retracing=True)
        for v in range(views):
            xv = x_all[:, :, ::-1, :] if v else x_all
            for i in range(0, len(xv), batch_size):
                out[i:i + batch_size, k, v] = run(tf.constant(xv[i:i + batch_size])).numpy()
    return out


def keras_outputs(models: Sequence[Any], images: np.ndarray, temperature: float = 1.0, tta: str = "none",
                  batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs [N,7], logits [N,7], member_probs [N,M,V,7]) of the ORIGINAL Keras models, as defined above."""
    check_options(temperature, tta)
    z = keras_member_logits(models, images, tta, batch_size)
    s = z / temperature
    e = np.exp(s - s.max(-1, keepdims=True))
    member_probs = e / e.sum(-1, keepdims=True)
    return (member_probs.mean((1, 2)).astype(np.float32), z.mean((1, 2)).astype(np.float32),
            member_probs.astype(np.float32))


def tf_saliency(models: Sequence[Any], images: np.ndarray, classes: np.ndarray, tta: str = "none",
                method: str = "reference", batch_size: int = 64) -> np.ndarray:
    """Saliency [N,48,48,1] computed in TensorFlow, batched.

    ``method="reference"`` uses TF's gradients of the original Keras models (ground truth);
    ``method="twin"`` runs the exported graph's TF function (what the ONNX file computes).
    """
    if method == "reference":
        fn = make_reference_saliency_fn(models, tta)
        call = lambda x, c: fn(x, c)  # noqa: E731
    elif method == "twin":
        sal = make_saliency_fn(models, 1.0, tta)
        call = lambda x, c: sal(x, c)["saliency"]  # noqa: E731
    else:
        raise ValueError(f"unknown method {method!r}; choose reference or twin")
    x_all = np.asarray(images, np.float32)
    c_all = np.asarray(classes, np.int64)
    out = [call(tf.constant(x_all[i:i + batch_size]), tf.constant(c_all[i:i + batch_size])).numpy()
           for i in range(0, len(x_all), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
