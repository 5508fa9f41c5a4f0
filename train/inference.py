"""Keras ensemble inference, written once: loading members, member logits, probabilities, reference saliency.

For an ensemble of M members and V views (:mod:`fer_runtime.tta`: V=2 with flip TTA, view 0 the image and
view 1 its mirror; V=12 with crop TTA):

* ``member_logits[n, m, v]``: the logits of member m on view v, [N, M, V, 7];
* ``probs = mean over members and views of softmax(member_logits / temperature)``;
* ``saliency[n] = d mean_logits[n, class[n]] / d image[n]``, where ``mean_logits`` is the mean of the
  member logits over members and views (the temperature does not enter it).

The exported ONNX graphs (:mod:`fer_export.graphs`) compute the same quantities and are verified
against this module; evaluation, teachers, the analysis suite and the benchmarks all call it.
Models take raw 0..255 pixels [N,48,48,1]. TensorFlow is imported by the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fer_runtime.errors import FerError, first_line
from fer_runtime.labels import IMAGE_SIZE, NUM_CLASSES
from fer_runtime.manifest import CLASS_INPUT, IMAGE_INPUT, LOGITS
from fer_runtime.numeric import softmax
from fer_runtime.tta import TTA_MODES, crop_matrices, view_count
from fer_train import runs


class KerasInferenceError(FerError, ValueError):
    """A Keras model cannot be loaded or run as asked (unreadable file, no logits layer, unknown TTA, bad temperature)."""


def check_options(temperature: float = 1.0, tta: str = "none") -> None:
    """Raise KerasInferenceError for a non-positive temperature or an unknown TTA mode."""
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise KerasInferenceError(f"temperature must be a positive number, got {temperature!r}")
    if tta not in TTA_MODES:
        raise KerasInferenceError(f"unknown TTA {tta!r}; choose from {', '.join(TTA_MODES)}")


def views_of(tta: str) -> int:
    """Number of TTA views averaged over (:func:`fer_runtime.tta.view_count`)."""
    check_options(1.0, tta)
    return view_count(tta)


# ---- loading -------------------------------------------------------------------------------------

def load_model(path: str | Path) -> Any:
    """Load one ``.keras`` file for inference: no optimizer, every layer computing in float32.

    Members trained under a mixed-precision policy are switched to float32, so every caller (and the
    float32 ONNX export verified against them) computes the same thing.
    """
    import keras

    path = Path(path)
    try:
        runs.check_keras_file(path)
    except runs.RunError as e:
        raise KerasInferenceError(str(e)) from None
    import fer_train.fake_quant  # noqa: F401 (registers the rounding layer of a quantization-aware run)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for corrupt or foreign files
        raise KerasInferenceError(f"{path}: cannot load the Keras model "
                                  f"({first_line(e, named=True)[:200]})") from None
    if any(l.compute_dtype != "float32" for l in model.layers):
        for l in model.layers:
            l.dtype_policy = "float32"
    return model


def load_models(path: str | Path) -> list[Any]:
    """The member models of a run, ensemble directory or ``.keras`` file, loaded with :func:`load_model`."""
    return [load_model(p) for p in runs.member_paths(path)]


# ---- logits --------------------------------------------------------------------------------------

def is_softmax(layer: Any) -> bool:
    """Whether ``layer`` is a softmax ``Activation`` layer."""
    return type(layer).__name__ == "Activation" and getattr(layer.activation, "__name__", "") == "softmax"


def logits_layer(model: Any) -> Any:
    """The layer whose output is the model's logits: the one named ``logits``, else the input of a final softmax."""
    names = [l.name for l in model.layers]
    if LOGITS in names:
        return model.get_layer(LOGITS)
    if model.layers and is_softmax(model.layers[-1]) and len(model.layers) >= 2:
        return model.layers[-2]
    raise KerasInferenceError(f"model {model.name!r} has no layer named {LOGITS!r} and does not end in a softmax Activation")


def logits_models(models: Sequence[Any]) -> list[Any]:
    """Sub-models from each member's input to its logits layer (pre-softmax scores)."""
    import keras

    return [keras.Model(m.inputs[0], logits_layer(m).output, name=f"{m.name}_logits") for m in models]


def mirror(image: Any) -> Any:
    """The left-right mirror of an image batch [N,H,W,C] (TF tensor): TTA view 1."""
    import tensorflow as tf

    return tf.reverse(image, [2])


def crop_view(image: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
    """``rows @ image @ cols.T`` per image of a [N,48,48,1] batch (TF tensor): a crop TTA view."""
    import tensorflow as tf

    x = tf.reshape(image, [-1, IMAGE_SIZE, IMAGE_SIZE])
    y = tf.matmul(tf.matmul(tf.constant(rows), x), tf.constant(np.ascontiguousarray(cols.T)))
    return tf.reshape(y, [-1, IMAGE_SIZE, IMAGE_SIZE, 1])


def views(image: Any, tta: str, flip: Callable[[Any], Any] = mirror,
          crop: Callable[[Any, np.ndarray, np.ndarray], Any] = crop_view) -> list[Any]:
    """The TTA views of an image batch in :mod:`fer_runtime.tta`'s order (each base view, then its mirror)."""
    if tta == "none":
        return [image]
    bases = [image] + ([crop(image, r, c) for r, c in crop_matrices()] if tta == "crops" else [])
    return [v for b in bases for v in (b, flip(b))]


def term_logits(fns: Sequence[Callable[[Any], Any]], image: Any, tta: str, flip: Callable[[Any], Any] = mirror,
                crop: Callable[[Any, np.ndarray, np.ndarray], Any] = crop_view) -> list[Any]:
    """The logits of every (member, view) term, member-major and view-minor (the order of [N, M, V, 7])."""
    vs = views(image, tta, flip, crop)
    return [f(v) for f in fns for v in vs]


def image_spec() -> Any:
    """The TF signature of an image batch: float32 [None, 48, 48, 1]."""
    import tensorflow as tf

    return tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name=IMAGE_INPUT)


def class_spec() -> Any:
    """The TF signature of the saliency graph's class indices: int64 [None]."""
    import tensorflow as tf

    return tf.TensorSpec([None], tf.int64, name=CLASS_INPUT)


def _logit_calls(models: Sequence[Any]) -> list[Callable[[Any], Any]]:
    return [lambda v, s=s: s(v, training=False) for s in logits_models(models)]


def member_logits_fn(models: Sequence[Any], tta: str = "none") -> Any:
    """``tf.function(image [N,48,48,1]) -> member logits [N, M, V, 7]`` (float32) of the Keras models."""
    import tensorflow as tf

    shape = [-1, len(models), views_of(tta), NUM_CLASSES]
    calls = _logit_calls(models)

    @tf.function(input_signature=[image_spec()])
    def f(image):
        return tf.reshape(tf.stack(term_logits(calls, image, tta), axis=1), shape)
    return f


def mean_logits_fn(models: Sequence[Any], tta: str = "none") -> Callable[[Any], Any]:
    """``f(image tensor) -> [N,7]``: the member logits averaged over members and views (differentiable in TF)."""
    import tensorflow as tf

    check_options(1.0, tta)
    calls = _logit_calls(models)

    def f(image):
        zs = term_logits(calls, image, tta)
        return tf.add_n(zs) / float(len(zs))
    return f


def member_logits(models: Sequence[Any], images: np.ndarray, tta: str = "none", batch_size: int = 128) -> np.ndarray:
    """Logits [N, M, V, 7] (float64) of the Keras models on each TTA view (view 1 = mirrored), batched."""
    import tensorflow as tf

    fn = member_logits_fn(models, tta)
    x_all = np.asarray(images, np.float32)
    out = [fn(tf.constant(x_all[i:i + batch_size])).numpy() for i in range(0, len(x_all), batch_size)]
    if not out:
        return np.zeros((0, len(models), views_of(tta), NUM_CLASSES), np.float64)
    return np.concatenate(out).astype(np.float64)


# ---- probabilities -------------------------------------------------------------------------------

def member_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(member_logits / temperature)`` [N, M, V, 7] (float64) from :func:`member_logits`."""
    check_options(temperature)
    return softmax(logits, temperature)


def probs_of(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The ensemble probabilities [N,7] (float32) from member logits [N, M, V, 7]: mean of the member softmax."""
    return member_probs(logits, temperature).mean((1, 2)).astype(np.float32)


def predict_probs(models: Sequence[Any], images: np.ndarray, tta: str = "none", temperature: float = 1.0,
                  batch_size: int = 128) -> np.ndarray:
    """Ensemble probabilities [N,7] (float32) on raw 0..255 images, with ``tta`` views and ``temperature``."""
    check_options(temperature, tta)
    return probs_of(member_logits(models, images, tta, batch_size), temperature)


# ---- reference saliency --------------------------------------------------------------------------

def reference_saliency_fn(models: Sequence[Any], tta: str = "none") -> Any:
    """``tf.function(image, class) -> saliency [N,48,48,1]``: TF's own gradient of the mean logit of ``class``.

    This differentiates the ORIGINAL Keras models; it is the ground truth the exported ONNX
    saliency graph is verified against.
    """
    import tensorflow as tf

    f = mean_logits_fn(models, tta)

    @tf.function(input_signature=[image_spec(), class_spec()])
    def reference(image, cls):
        with tf.GradientTape() as tape:
            tape.watch(image)
            score = tf.reduce_sum(f(image) * tf.one_hot(cls, NUM_CLASSES), axis=1)
        return tape.gradient(score, image)
    return reference


def reference_saliency(models: Sequence[Any], images: np.ndarray, classes: np.ndarray, tta: str = "none",
                       batch_size: int = 64) -> np.ndarray:
    """Raw saliency [N,48,48,1] (float32) of ``classes`` by :func:`reference_saliency_fn`, batched."""
    import tensorflow as tf

    fn = reference_saliency_fn(models, tta)
    x_all = np.asarray(images, np.float32)
    c_all = np.asarray(classes, np.int64)
    out = [fn(tf.constant(x_all[i:i + batch_size]), tf.constant(c_all[i:i + batch_size])).numpy()
           for i in range(0, len(x_all), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
