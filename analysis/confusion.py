"""Confusion: the row-normalised confusion heatmap and the most-confused (true -> predicted) class pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_analysis.figures import compact_png, pyplot, save
from fer_analysis.inputs import AnalysisError, Target
from fer_analysis.results import result, write_csv
from fer_runtime.labels import LABELS, NUM_CLASSES
from fer_train.metrics import row_normalise


def top_confused_pairs(cm: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` off-diagonal (true -> predicted) cells with the highest row-normalised rate (count breaks ties)."""
    cm, rate = np.asarray(cm), row_normalise(cm)
    support = cm.sum(1)
    cells = [(rate[i, j], cm[i, j], i, j) for i in range(len(cm)) for j in range(len(cm))
             if i != j and support[i] > 0 and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [{"true": LABELS[i], "predicted": LABELS[j], "true_index": int(i), "predicted_index": int(j),
             "rate": float(r), "count": int(n), "support": int(support[i])} for r, n, i, j in cells[:k]]


def plot_confused_pairs(pairs: Sequence[dict], title: str, path: Path) -> Path:
    """Horizontal bars of the most-confused (true -> predicted) pairs and their row-normalised rates."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * max(len(pairs), 1) + 1.1))
    names = [f"{p['true']} \u2192 {p['predicted']}" for p in pairs][::-1]
    rates = [p["rate"] for p in pairs][::-1]
    bars = ax.barh(names, rates, color="#d9534f")
    for b, p in zip(bars, pairs[::-1]):
        ax.text(b.get_width() + 0.005, b.get_y() + b.get_height() / 2, f"{p['rate']:.1%} ({p['count']}/{p['support']})",
                va="center", fontsize=8)
    ax.set_xlim(0, max(rates + [0.05]) * 1.35)
    ax.set_xlabel("share of the true class predicted as the other")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def analyze_confusion(t: Target, out: Path, top: int = 5) -> dict[str, Any]:
    """Row-normalised confusion heatmap and the ``top`` (>= 1) most-confused class pairs with their rates."""
    from fer_train.metrics import classification_report
    from fer_train.plots import plot_confusion

    if top < 1:
        raise AnalysisError(f"--top must be >= 1, got {top}")
    rows = t.labelled_rows()
    rep = classification_report(t.split.y[rows], t.probs[rows])
    cm = np.array(rep["confusion"])
    pairs = top_confused_pairs(cm, top)
    title = f"{t.name} on {t.split_name}: acc {rep['accuracy']:.3f}, balanced {rep['balanced_accuracy']:.3f}"
    f1 = compact_png(plot_confusion(cm, title, out / "confusion.png"))
    f2 = plot_confused_pairs(pairs, f"Most confused pairs ({t.name}, {t.split_name})", out / "confused_pairs.png")
    norm = row_normalise(cm)
    c1 = write_csv(out / "confusion.csv", ["true", *[f"pred_{l}" for l in LABELS], "support"],
                   [[LABELS[i], *[float(v) for v in norm[i]], int(cm[i].sum())] for i in range(NUM_CLASSES)])
    c2 = write_csv(out / "confused_pairs.csv", ["true", "predicted", "rate", "count", "support"],
                   [[p["true"], p["predicted"], p["rate"], p["count"], p["support"]] for p in pairs])
    summary = {"run": str(t.path), "split": t.split_name, "n": rep["n"], "accuracy": rep["accuracy"],
               "balanced_accuracy": rep["balanced_accuracy"], "macro_f1": rep["macro_f1"],
               "recall": {k: v["recall"] for k, v in rep["per_class"].items()},
               "support": {k: v["support"] for k, v in rep["per_class"].items()}, "pairs": pairs,
               "confusion": cm.tolist()}
    return result("confusion", [f1, f2], [c1, c2], summary, out)
