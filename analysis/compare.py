"""Compare: two runs (e.g. the CNN against its parameter-matched DNN) side by side.

Parameters, accuracy, NLL, ECE, learning curves and per-class recall on the same split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_analysis.figures import pyplot, save
from fer_analysis.inputs import AnalysisError, Target
from fer_analysis.results import result, write_csv
from fer_runtime.labels import LABELS
from fer_train import runs


def run_facts(t: Target) -> dict[str, Any]:
    """Config, history and best epoch of a run directory (empty for ensembles and bare .keras files)."""
    p = t.path
    if not (p.is_dir() and (p / runs.CONFIG).exists()):
        return {"history": [], "config": {}}
    hist = runs.read_history(p)
    be, bv = runs.best_epoch(hist)
    return {"history": hist, "config": runs.read_json(p / runs.CONFIG).get("model", {}), "best_epoch": be,
            "best_val_accuracy": bv, "epochs": len(hist)}


def plot_compare(names: tuple[str, str], histories: tuple[list[dict], list[dict]], recalls: tuple[Sequence[float], Sequence[float]],
                 summary: tuple[str, str], title: str, path: Path) -> Path:
    """Two runs side by side: validation/train accuracy curves, loss curves, and per-class recall bars."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    colors = ("#1f77b4", "#ff7f0e")
    for name, hist, col, summ in zip(names, histories, colors, summary):
        if not hist:
            continue
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["val_accuracy"] for r in hist], "-", color=col, label=f"{name} val")
        axes[0].plot(ep, [r["accuracy"] for r in hist], "--", color=col, alpha=0.6, label=f"{name} train")
        axes[1].plot(ep, [r["val_loss"] for r in hist], "-", color=col, label=f"{name} val")
        axes[1].plot(ep, [r["loss"] for r in hist], "--", color=col, alpha=0.6, label=f"{name} train")
    for ax, t in ((axes[0], "Accuracy per epoch"), (axes[1], "Loss per epoch")):
        ax.set_xlabel("epoch")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    xs = np.arange(len(LABELS))
    for k, (name, rec, col, summ) in enumerate(zip(names, recalls, colors, summary)):
        axes[2].bar(xs + (k - 0.5) * 0.4, rec, 0.4, color=col, label=f"{name}: {summ}")
    axes[2].set_xticks(xs, LABELS, rotation=30, ha="right")
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("recall")
    axes[2].set_title("Per-class recall", fontsize=10)
    axes[2].grid(axis="y", alpha=0.3)
    axes[2].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def analyze_compare(a: Target, b: Target, out: Path) -> dict[str, Any]:
    """Two runs (e.g. CNN against its parameter-matched DNN) side by side: params, accuracy, curves, per-class recall."""
    from fer_train.metrics import classification_report

    if a.split_name != b.split_name:
        raise AnalysisError("both runs must be compared on the same split")
    stats = []
    for t in (a, b):
        rows = t.labelled_rows()
        rep = classification_report(t.split.y[rows], t.probs[rows])
        facts = run_facts(t)
        stats.append({"run": str(t.path), "name": t.name, "arch": facts["config"].get("arch", "?"), "params": t.params(),
                      "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"],
                      "macro_f1": rep["macro_f1"], "nll": rep["nll"], "ece": rep["ece"],
                      "recall": {k: v["recall"] for k, v in rep["per_class"].items()},
                      "best_epoch": facts.get("best_epoch"), "epochs": facts.get("epochs"), "_history": facts["history"]})
    names = (f"{stats[0]['name']} ({stats[0]['arch']})", f"{stats[1]['name']} ({stats[1]['arch']})")
    summ = tuple(f"{s['params']:,} params, acc {s['accuracy']:.3f}" for s in stats)
    fig = plot_compare(names, (stats[0]["_history"], stats[1]["_history"]),
                       tuple([s["recall"][l] for l in LABELS] for s in stats), summ,
                       f"{names[0]} vs {names[1]} on {a.split_name}", out / "compare.png")
    c = write_csv(out / "compare.csv", ["metric", stats[0]["name"], stats[1]["name"]],
                   [[k, *[s[k] for s in stats]] for k in ("params", "accuracy", "balanced_accuracy", "macro_f1", "nll", "ece")]
                   + [[f"recall_{l}", *[s["recall"][l] for s in stats]] for l in LABELS])
    for s in stats:
        s.pop("_history")
    summary = {"split": a.split_name, "n": int(len(a.labelled_rows())), "runs": stats}
    return result("compare", [fig], [c], summary, out)
