"""Class maximisation: for each class, the input that maximises its mean logit, from gray noise.

Regularised so that the result is more than adversarial noise: random jitter, a periodic Gaussian
blur and a small decay towards mid-gray. Pixel units (0..255) throughout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_analysis.figures import plot_image_grid
from fer_analysis.filters import rms_normalise
from fer_analysis.inputs import AnalysisError, Target
from fer_analysis.results import result, write_csv
from fer_runtime.labels import IMAGE_SIZE, LABELS, NUM_CLASSES


def class_max(models: Sequence[Any], steps: int = 200, step_size: float = 1.5, blur_every: int = 4,
              blur_sigma: float = 0.7, jitter: int = 2, decay: float = 0.002, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each class, the input that maximises its mean logit, from gray noise.

    Random jitter (shift by up to ``jitter`` pixels before each gradient), a Gaussian blur every
    ``blur_every`` steps, and a ``decay`` of the image towards mid-gray. Returns (images [7,48,48]
    0..255, logit trace [steps+1, 7]).
    """
    import cv2
    import tensorflow as tf

    from fer_train.inference import image_spec, mean_logits_fn

    f = mean_logits_fn(models)
    cls = tf.range(NUM_CLASSES, dtype=tf.int64)

    @tf.function(input_signature=[image_spec()])
    def step(xb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            z = tf.reduce_sum(f(xb) * tf.one_hot(cls, NUM_CLASSES), -1)
            total = tf.reduce_sum(z)
        return z, rms_normalise(tape.gradient(total, xb))

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


def analyze_class_max(t: Target, out: Path, steps: int = 200, seed: int = 0, blur_every: int = 4,
                      jitter: int = 2) -> dict[str, Any]:
    """For each class, the input maximising its mean logit (jitter + blur + decay regularised), with its softmax."""
    from fer_train.inference import predict_probs

    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    imgs, trace = class_max(t.models, steps=steps, blur_every=blur_every, jitter=jitter, seed=seed)
    probs = predict_probs(t.models, imgs[..., None])
    caps = [f"{LABELS[c]}: p={probs[c, c]:.2f}" for c in range(NUM_CLASSES)]
    fig = plot_image_grid(imgs, caps, NUM_CLASSES,
                          f"{t.name}: inputs maximising each class logit ({steps} steps, jitter {jitter}px, "
                          f"blur every {blur_every})", out / "class_max.png", panel=1.6)
    c = write_csv(out / "class_max.csv", ["class", "initial_logit", "final_logit", "softmax", *[f"p_{l}" for l in LABELS]],
                  [[LABELS[k], float(trace[0, k]), float(trace[-1, k]), float(probs[k, k]), *map(float, probs[k])]
                   for k in range(NUM_CLASSES)])
    summary = {"run": str(t.path), "steps": steps, "jitter": jitter, "blur_every": blur_every,
               "classes": {LABELS[k]: {"initial_logit": float(trace[0, k]), "final_logit": float(trace[-1, k]),
                                       "softmax": float(probs[k, k])} for k in range(NUM_CLASSES)}}
    return result("class_max", [fig], [c], summary, out)
