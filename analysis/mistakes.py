"""Mistakes: the most confident errors of the most-confused (true -> predicted) pairs, as a labelled gallery."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_analysis.confusion import top_confused_pairs
from fer_analysis.figures import grid, gray, save, suptitle
from fer_analysis.inputs import AnalysisError, Target
from fer_analysis.results import result, write_csv
from fer_runtime.labels import LABELS


def plot_mistake_gallery(rows: Sequence[tuple[str, np.ndarray, Sequence[str]]], cols: int, title: str,
                         path: Path) -> Path:
    """One row per confused pair: its most confident errors with 'true -> predicted, confidence' captions."""
    fig, axes = grid(len(rows), cols + 1, panel=1.2)
    for r, (name, imgs, caps) in enumerate(rows):
        axes[r, 0].text(0.5, 0.5, name, ha="center", va="center", fontsize=9, wrap=True, transform=axes[r, 0].transAxes)
        for c in range(min(cols, len(imgs))):
            gray(axes[r, c + 1], imgs[c], caps[c], fontsize=6)
    suptitle(fig, title)
    return save(fig, path)


def analyze_mistakes(t: Target, out: Path, pairs: int = 3, per_pair: int = 6) -> dict[str, Any]:
    """The most confident errors of the ``pairs`` most-confused (true -> predicted) pairs, as a labelled gallery."""
    from fer_train.metrics import confusion_matrix

    if pairs < 1 or per_pair < 1:
        raise AnalysisError("--pairs and --per-pair must be >= 1")
    rows = t.labelled_rows()
    y, pred = t.split.y[rows], t.probs[rows].argmax(1)
    top = top_confused_pairs(confusion_matrix(y, pred), pairs)
    gallery, table = [], []
    for p in top:
        a, b = p["true_index"], p["predicted_index"]
        r = rows[(y == a) & (pred == b)]
        r = r[np.argsort(-t.probs[r, b], kind="stable")][:per_pair]
        caps = [f"#{i} \u2192{LABELS[b]} {t.probs[i, b]:.2f}" for i in r]
        gallery.append((f"{LABELS[a]}\n\u2192 {LABELS[b]}\n{p['rate']:.0%} of {LABELS[a]}", t.split.x[r, :, :, 0], caps))
        table += [[LABELS[a], LABELS[b], int(i), int(t.split.ids[i]), float(t.probs[i, b]), float(t.probs[i, a])] for i in r]
    if not gallery:
        raise AnalysisError(f"{t.name} makes no errors on {t.split_name}; nothing to show")
    fig = plot_mistake_gallery(gallery, per_pair, f"{t.name}: most confident errors of the top confused pairs "
                               f"({t.split_name}; caption: row, predicted class, its probability)", out / "mistakes.png")
    c = write_csv(out / "mistakes.csv", ["true", "predicted", "row", "id", "confidence", "p_true"], table)
    summary = {"run": str(t.path), "split": t.split_name, "pairs": top,
               "mistakes": [dict(zip(("true", "predicted", "row", "id", "confidence", "p_true"), r)) for r in table]}
    return result("mistakes", [fig], [c], summary, out)
