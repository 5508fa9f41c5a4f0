"""TF functions for an ensemble: the exported forward and saliency graphs.

:func:`make_forward_fn` and :func:`make_saliency_fn` are built from the gradient twins
(:mod:`fer_export.twin`) and are what gets converted to ONNX. They compute the quantities
defined in :mod:`fer_train.inference` (member logits over TTA views, probabilities at a
temperature, saliency of the mean logit), which is also TF's own reference the export is
verified against (:mod:`fer_export.verify`). The forward graph's outputs:
``logits = mean over members and views of the member logits``;
``probs = mean over members and views of softmax(member logits / temperature)``;
``member_probs[n, m, v] = softmax(logits of member m on view v / temperature)`` ([N, M, V, 7]; views as
:mod:`fer_runtime.tta` defines them), so ``probs = member_probs.mean((1, 2))``;
the saliency graph's ``saliency[n] = d logits[n, class[n]] / d image[n]`` (temperature does not enter it).
"""
from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from fer_export import twin
from fer_export.errors import ExportError
from fer_runtime.labels import NUM_CLASSES
from fer_runtime.manifest import LOGITS, MEMBER_PROBS, PROBS, SALIENCY
from fer_train import inference
from fer_train.inference import term_logits


IMAGE_SPEC = inference.image_spec()
CLASS_SPEC = inference.class_spec()


def check_options(temperature: float, tta: str) -> None:
    """Raise ExportError for a non-positive temperature or an unknown TTA mode (the rule of :mod:`fer_train.inference`)."""
    try:
        inference.check_options(temperature, tta)
    except inference.KerasInferenceError as e:
        raise ExportError(str(e)) from None


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
    shape = [-1, len(models), inference.views_of(tta), NUM_CLASSES]

    @tf.function(input_signature=[IMAGE_SPEC])
    def forward(image):
        zs = term_logits(fns, image, tta, twin.flip_width, twin.crop_view)
        ps = _term_probs(zs, temperature)  # member-major, view-minor: the order of the reshape below
        return {PROBS: tf.add_n(ps) * (1.0 / len(ps)), LOGITS: tf.add_n(zs) * (1.0 / len(zs)),
                MEMBER_PROBS: tf.reshape(tf.stack(ps, axis=1), shape)}
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
            zs = term_logits(fns, image, tta, twin.flip_width, twin.crop_view)
        seed = tf.one_hot(cls, NUM_CLASSES, dtype=tf.float32) * (1.0 / len(zs))
        grad = tape.gradient(zs, image, output_gradients=[seed] * len(zs))
        return {PROBS: _mean_probs(zs, temperature), SALIENCY: grad}
    return saliency
