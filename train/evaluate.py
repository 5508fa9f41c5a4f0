"""Evaluating a run or an ensemble on a split, and predicting for a course test.csv (inference: :mod:`fer_train.inference`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime.atomic import atomic_write
from fer_runtime.labels import LABELS
from fer_train import runs
from fer_train.data import DataSource, Split, load_source
from fer_train.inference import load_models, predict_probs
from fer_train.metrics import classification_report
from fer_train.plots import plot_confusion

def data_path_of(path: str | Path) -> str:
    """The training data a run (or an ensemble's first member) was trained on."""
    p = Path(path)
    if (p / runs.ENSEMBLE).exists():
        members, data = runs.read_ensemble(p)  # data is relative to the ensemble folder (or absolute)
        return data or data_path_of(members[0])
    if p.is_file():
        p = p.parent
    from fer_train.config import read_run_config

    return read_run_config(p)[2].data


def split_name(name: str) -> str:
    """A split's name from what a user typed (``validation`` -> ``val``, ``public`` -> ``PublicTest``, ...)."""
    aliases = {"val": "val", "validation": "val", "public": "PublicTest", "private": "PrivateTest",
               "publictest": "PublicTest", "privatetest": "PrivateTest", "training": "Training"}
    return aliases.get(name.lower(), name)


def split_of(source: DataSource, name: str) -> Split:
    """The split of ``source`` that ``name`` (or its alias) means; KeyError listing the splits if none."""
    return source[split_name(name)]


def validation_settings(path: str | Path) -> set[tuple[float, int]]:
    """The (val_fraction, validation seed) each member run of ``path`` drew its validation rows with (data without
    a fixed validation split: a course train.csv, image folders). Members that are bare .keras files add none."""
    from fer_train.config import read_run_config

    found = set()
    for m in runs.member_paths(path):
        if (m.parent / runs.CONFIG).exists():
            cfg = read_run_config(m.parent)[2]
            found.add((cfg.val_fraction, cfg.validation_seed))
    return found


def load_for(path: str | Path, data: str | os.PathLike[str], split: str) -> DataSource:
    """``data`` as ``path``'s runs saw it: its validation rows drawn as they were in training.

    Raises RunError for ``val`` of an ensemble whose members drew different validation rows (each member's
    are another member's training rows); a fixed split (PublicTest) is fine."""
    from fer_train.config import TrainConfig

    settings = validation_settings(path)
    default = TrainConfig()  # a bare .keras file: fer-train fit's defaults
    frac, seed = min(settings) if settings else (default.val_fraction, default.validation_seed)
    source = load_source(data, frac, seed)
    if split_name(split) == "val" and len(settings) > 1 and not source.fixed_validation:
        raise runs.RunError(f"{path}: its members drew different validation rows from {Path(data).name} "
                            f"({', '.join(f'{f:g} seed {s}' for f, s in sorted(settings))}); evaluate each member, "
                            "or on a split none of them trained on")
    return source


def evaluate(path: str | Path, split: str = "PublicTest", tta: str = "none", data: str | None = None,
             out: Path | None = None, source: DataSource | None = None) -> dict[str, Any]:
    """Metrics of a run/ensemble on ``split``; writes metrics.json, confusion CSV and PNG into ``out``."""
    path = Path(path)
    runs.member_paths(path)  # fail early, naming the path, if it is not a run
    split = split_name(split)  # metrics.json and file names use the split's own name, not the alias typed
    out = Path(out) if out else (path if path.is_dir() else path.parent)
    if source is None:
        data = data or data_path_of(path)
        if not Path(data).exists():
            raise runs.RunError(f"{path}: its data is not at {data}; pass --data PATH to say where it is on this machine")
        source = load_for(path, data, split)
    s = split_of(source, split)
    allm = runs.read_metrics(out)  # a damaged file fails now, not after the evaluation
    probs = predict_probs(load_models(path), s.x, tta)
    rep = classification_report(s.y, probs)
    key = split + ("" if tta == "none" else f"+{tta}")
    # paths relative to the metrics file, so a committed metrics.json holds nothing of this machine
    members = [os.path.relpath(m.resolve(), out.resolve()) for m in runs.member_paths(path)]
    rep.update({"split": split, "tta": tta, "members": members, "data": Path(data).name if data else source.path.name})
    metrics_path = out / runs.METRICS
    allm[key] = rep
    runs.write_json(metrics_path, allm)
    stem = f"confusion_{key.replace('+', '_')}"
    cm = np.array(rep["confusion"])
    atomic_write(out / f"{stem}.csv", "true\\pred," + ",".join(LABELS) + "\n" + "".join(
        f"{LABELS[i]}," + ",".join(str(v) for v in row) + "\n" for i, row in enumerate(cm)))
    plot_confusion(cm, f"{path.name}: {key}  acc {rep['accuracy']:.4f}  bal {rep['balanced_accuracy']:.4f}",
                   out / f"{stem}.png")
    rep["outputs"] = [str(metrics_path), str(out / f"{stem}.csv"), str(out / f"{stem}.png")]
    return rep


def format_report(rep: dict[str, Any]) -> str:
    """A plain-text table of a classification report."""
    lines = [f"{rep['split']} (tta {rep['tta']}): n={rep['n']}  accuracy {rep['accuracy']:.4f}  "
             f"balanced accuracy {rep['balanced_accuracy']:.4f}  macro F1 {rep['macro_f1']:.4f}  ECE {rep['ece']:.4f}",
             f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, r in rep["per_class"].items():
        lines.append(f"{name:<10}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}{r['support']:>10d}")
    lines.append("confusion (rows true, cols predicted): " + json.dumps(rep["confusion"]))
    return "\n".join(lines)


def write_submission(path: str | Path, test: Split, out: Path, tta: str = "none") -> Path:
    """Kaggle submission (id,label) for an unlabelled course test.csv."""
    probs = predict_probs(load_models(path), test.x, tta)
    pred = probs.argmax(1)
    atomic_write(out, "id,label\n" + "".join(f"{i},{p}\n" for i, p in zip(test.ids, pred)))
    return out
