"""Adversarial robustness: FGSM and iterative FGSM (L-infinity), accuracy against epsilon, example triplets.

Models take raw 0..255 pixels, so epsilons are in pixel units (e/255 of the [0, 1] range is e here)
and adversarial images are clipped to [0, 255]. The loss is the cross-entropy of the ensemble's mean
softmax (the definition of :mod:`fer_train.inference`), computed stably from the member logits.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fer_analysis.figures import SMALL, gray, grid, pyplot, save, suptitle
from fer_analysis.inputs import AnalysisError, Target, random_sample
from fer_analysis.results import result, write_csv
from fer_runtime.labels import LABELS

EPSILONS = (0.0, 1.0, 2.0, 4.0, 8.0)  # pixel units: e/255 of the [0, 1] range


def _batched(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    n = len(arrays[0])
    outs = [fn(*(a[i:i + batch_size] for a in arrays)) for i in range(0, n, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def loss_gradient_fn(models: Sequence[Any]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``g(x, y) -> d CE / d x`` [N,48,48,1] of the ensemble's mean softmax (computed stably from logits)."""
    import tensorflow as tf

    from fer_train.inference import image_spec, logits_models

    subs = logits_models(models)
    log_m = float(np.log(len(subs)))

    @tf.function(input_signature=[image_spec(), tf.TensorSpec([None], tf.int64)])
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


def plot_accuracy_vs_epsilon(eps_pixels: Sequence[float], curves: dict[str, Sequence[float]], n: int, title: str,
                             path: Path) -> Path:
    """Accuracy against epsilon (pixel units, i.e. x/255 of the [0,1] range) for each attack."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for k, ((name, acc), style) in enumerate(zip(curves.items(), ("-o", "-s", "-^"))):
        ax.plot(eps_pixels, acc, style, label=name)
        for e, a in zip(eps_pixels, acc):  # first curve labelled above its points, the others below
            ax.annotate(f"{a:.2f}", (e, a), textcoords="offset points", xytext=(0, 6 if k == 0 else -11), ha="center",
                        fontsize=7, color=f"C{k}")
    ax.set_xticks(list(eps_pixels), [f"{e:g}/255" for e in eps_pixels])
    ax.set_xlabel("epsilon (L\u221e, pixels out of 255)")
    ax.set_ylabel(f"accuracy (n={n})")
    ax.set_ylim(-0.06, 1)
    ax.axhline(1 / len(LABELS), color="gray", ls=":", lw=1, label="chance (1/7)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_adversarial_examples(x: np.ndarray, adv: np.ndarray, captions: Sequence[tuple[str, str]], eps: float,
                              title: str, path: Path) -> Path:
    """One row per example: original (prediction) | perturbation (signed, amplified) | adversarial (prediction)."""
    n = len(x)
    fig, axes = grid(n, 3)
    for i in range(n):
        img = x[i].reshape(x.shape[1], x.shape[2])
        gray(axes[i, 0], img, captions[i][0])
        d = (adv[i] - x[i]).reshape(img.shape)
        axes[i, 1].imshow(d, cmap="RdBu_r", vmin=-max(eps, 1e-6), vmax=max(eps, 1e-6), interpolation="nearest")
        axes[i, 1].set_title(f"perturbation \u00b1{eps:g}", fontsize=SMALL, pad=2)
        gray(axes[i, 2], adv[i].reshape(img.shape), captions[i][1])
    suptitle(fig, title)
    return save(fig, path)


def analyze_adversarial(t: Target, out: Path, n: int = 500, epsilons: Sequence[float] = EPSILONS, steps: int = 10,
                        examples: int = 6, example_eps: float = 4.0, seed: int = 0,
                        log: Any = lambda s: None) -> dict[str, Any]:
    """FGSM and iterative FGSM on a sample of the split: accuracy against epsilon, and example triplets.

    Epsilons are in pixel units (e/255 of the [0, 1] range; the models take 0..255 input).
    """
    from fer_train.inference import predict_probs

    eps = sorted({float(e) for e in epsilons})
    if not eps or any(not 0 <= e <= 255 for e in eps):  # NaN fails the test too
        raise AnalysisError(f"epsilons must be within 0..255 pixel units, got {eps}")
    if examples > 0 and not any(math.isclose(e, example_eps) for e in eps):
        raise AnalysisError(f"--example-eps {example_eps:g} is not among the epsilons {', '.join(f'{e:g}' for e in eps)}; "
                            "add it, or pass --examples 0")
    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    labelled = t.labelled_rows()
    rows = labelled[random_sample(len(labelled), n, seed)]
    x, y = t.split.x[rows].astype(np.float32), t.split.y[rows]
    grad_fn = loss_gradient_fn(t.models)
    table, kept = [], {}
    for e in eps:
        adv_f = fgsm(grad_fn, x, y, e)
        pf = predict_probs(t.models, adv_f)
        adv_i = ifgsm(grad_fn, x, y, e, steps)
        pi = predict_probs(t.models, adv_i)
        table.append({"eps_pixels": e, "eps": e / 255.0, "fgsm_accuracy": float((pf.argmax(1) == y).mean()),
                      "ifgsm_accuracy": float((pi.argmax(1) == y).mean())})
        log(f"epsilon {e:g}/255: FGSM {table[-1]['fgsm_accuracy']:.3f}, I-FGSM {table[-1]['ifgsm_accuracy']:.3f}")
        if e == 0:
            kept["clean"] = pf
        if math.isclose(e, example_eps):
            kept["adv"], kept["adv_probs"] = adv_f, pf
    f1 = plot_accuracy_vs_epsilon([r["eps_pixels"] for r in table],
                                  {"FGSM": [r["fgsm_accuracy"] for r in table],
                                   f"I-FGSM ({steps} steps)": [r["ifgsm_accuracy"] for r in table]},
                                  len(rows), f"{t.name}: accuracy under L\u221e attacks ({t.split_name} sample)",
                                  out / "adversarial_accuracy.png")
    figures = [f1]
    clean = kept["clean"] if "clean" in kept else predict_probs(t.models, x)
    shown: list[int] = []
    if "adv" in kept and examples > 0:
        ok = clean.argmax(1) == y
        flipped = np.flatnonzero(ok & (kept["adv_probs"].argmax(1) != y))
        rest = np.flatnonzero(ok & (kept["adv_probs"].argmax(1) == y))
        shown = [int(i) for i in [*flipped, *rest][:examples]]
        caps = [(f"#{rows[i]} true {LABELS[y[i]]}\nclean: {LABELS[clean[i].argmax()]} {clean[i].max():.2f}",
                 f"adversarial: {LABELS[kept['adv_probs'][i].argmax()]} {kept['adv_probs'][i].max():.2f}") for i in shown]
        if shown:
            figures.append(plot_adversarial_examples(x[shown], kept["adv"][shown], caps, example_eps,
                                                     f"{t.name}: FGSM at epsilon {example_eps:g}/255",
                                                     out / "adversarial_examples.png"))
    c = write_csv(out / "adversarial.csv", ["eps_pixels", "eps", "fgsm_accuracy", "ifgsm_accuracy", "n"],
                   [[r["eps_pixels"], r["eps"], r["fgsm_accuracy"], r["ifgsm_accuracy"], len(rows)] for r in table])
    summary = {"run": str(t.path), "split": t.split_name, "n": int(len(rows)), "seed": seed, "ifgsm_steps": steps,
               "ifgsm_alpha": "eps/4", "units": "pixels out of 255; inputs clipped to [0, 255]", "table": table,
               "examples": [{"row": int(rows[i]), "true": LABELS[y[i]], "clean": LABELS[clean[i].argmax()],
                             "adversarial": LABELS[kept["adv_probs"][i].argmax()],
                             "adversarial_confidence": float(kept["adv_probs"][i].max())} for i in shown],
               "example_eps_pixels": example_eps}
    return result("adversarial", figures, [c], summary, out)
