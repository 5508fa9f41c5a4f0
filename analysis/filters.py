"""Filters: what each filter of a conv layer responds to, by gradient ascent from white noise.

Models take raw 0..255 pixels, so step sizes are in pixel units and images are clipped to [0, 255].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fer_analysis.figures import grid_cols, plot_image_grid
from fer_analysis.inputs import AnalysisError, Target, layer_model, pick_layer
from fer_analysis.results import result, write_csv
from fer_runtime.labels import IMAGE_SIZE
from fer_train import runs

_RMS_EPS = 1e-8


def rms_normalise(g: Any) -> Any:
    """A gradient batch [N,H,W,C] (TF) scaled to unit RMS per image: one ascent step moves 1 pixel unit RMS."""
    import tensorflow as tf

    return g / (tf.sqrt(tf.reduce_mean(tf.square(g), axis=[1, 2, 3], keepdims=True)) + _RMS_EPS)


def filter_ascent(model: Any, layer: str, steps: int = 100, step_size: float = 1.0, seed: int = 0,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient ascent from white noise on the mean activation of every filter of ``layer``.

    Returns (images [F,48,48] in 0..255, initial mean activation [F], final mean activation [F]).
    Each step moves the image by ``step_size`` pixel units RMS along the normalised gradient.
    """
    import tensorflow as tf

    from fer_train.inference import image_spec

    sub = layer_model(model, layer)
    n_filters = int(sub.output.shape[-1])

    @tf.function(input_signature=[image_spec(), tf.TensorSpec([None], tf.int32)])
    def step(xb, fb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            a = sub(xb, training=False)
            act = tf.reduce_mean(tf.reduce_sum(a * tf.one_hot(fb, n_filters)[:, None, None, :], -1), axis=[1, 2])
            total = tf.reduce_sum(act)  # inside the tape, or the gradient is None
        return act, rms_normalise(tape.gradient(total, xb))

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


def analyze_filters(t: Target, out: Path, layer: str | None = None, steps: int = 100, step_size: float = 1.0,
                    seed: int = 0) -> dict[str, Any]:
    """Gradient ascent from white noise for every filter of a conv layer (first member), drawn as a grid."""
    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    model = t.models[0]
    layer = pick_layer(model, layer, "conv", t.path)
    imgs, first, last = filter_ascent(model, layer, steps, step_size, seed)
    n = len(imgs)
    caps = [f"#{i} {last[i]:.3g}" for i in range(n)]
    title = (f"{t.name}: {layer}, {n} filters, {steps} gradient-ascent steps from noise "
             f"(caption: filter, final mean activation)")
    fig = plot_image_grid(imgs, caps, grid_cols(n), title, out / "filters.png", panel=0.9 if n > 32 else 1.2)
    c = write_csv(out / "filters.csv", ["filter", "initial_activation", "final_activation"],
                  [[i, float(first[i]), float(last[i])] for i in range(n)])
    summary = {"run": str(t.path), "member": str(runs.member_paths(t.path)[0]), "layer": layer, "filters": n, "steps": steps, "step_size": step_size,
               "raised": int((last > first).sum()), "mean_initial": float(first.mean()), "mean_final": float(last.mean()),
               "top_filters": [int(i) for i in np.argsort(-last)[:8]]}
    return result("filters", [fig], [c], summary, out)
