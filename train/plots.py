"""Matplotlib figures of the training side (Agg backend, written atomically as PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime.atomic import atomic_path
from fer_runtime.labels import LABELS
from fer_train import runs
from fer_train.metrics import row_normalise


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` atomically and close it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_run_curves(run: Path) -> Path | None:
    """Write the run's learning_curves.png from its history.csv (None when it has no epoch yet)."""
    h = runs.read_history(run)
    if not h:
        return None
    swa = runs.read_json(run / runs.SWA_RESULT) if (run / runs.SWA_RESULT).exists() else None
    average = (f"{runs.SWA_MODEL} (mean of {swa['epochs_averaged']} epochs)", swa["val_accuracy"]) if swa else None
    return plot_learning_curves(h, runs.best_epoch(h), run.name, run / runs.CURVES, average)


def plot_learning_curves(history: list[dict[str, float]], best: tuple[int, float], title: str, path: Path,
                         average: tuple[str, float] | None = None) -> Path:
    """Loss and accuracy per epoch, train against validation, with the selected epoch marked; ``average``:
    (name, validation accuracy) of a weight average, drawn as a level line."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, name in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(ep, [r[key] for r in history], "-o", ms=3, label="train")
        ax.plot(ep, [r[f"val_{key}"] for r in history], "-o", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole: no tick at 2.5
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].axvline(best[0], color="gray", ls="--", lw=1, label=f"best {best[1]:.4f} @ epoch {best[0]}")
    if average is not None:
        axes[1].axhline(average[1], color="tab:green", ls=":", lw=1.5, label=f"{average[0]}: {average[1]:.4f}")
    for ax in axes:  # below the axes, so no legend covers a point
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(cm: np.ndarray, title: str, path: Path, percent: bool = False) -> Path:
    """Row-normalised confusion matrix heatmap (recall on the diagonal) with counts; ``percent``: cells in %."""
    plt = pyplot()
    cm = np.asarray(cm, float)
    norm = row_normalise(cm)
    fig, ax = plt.subplots(figsize=(6.8, 5.8))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            share = f"{100 * norm[i, j]:.1f}%" if percent else f"{norm[i, j]:.2f}"
            ax.text(j, i, f"{share}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return save_figure(fig, path)
