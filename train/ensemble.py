"""Ensembles (train N members or gather runs) and semi-supervised self-training."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_runtime.labels import NUM_CLASSES
from fer_train import runs
from fer_train.data import Split, load_course_test, load_source
from fer_train.fit import TrainConfig, fit, hidden_label_mask
from fer_train.models import ModelConfig


def write_ensemble(out: Path, members: list[Path], data: str = "") -> Path:
    """Write ``out/ensemble.json`` listing ``members`` (run dirs or .keras files) relative to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for m in members:
        runs.member_models(m)  # raises RunError if it is not a run
        rel = Path(_relpath(m.resolve(), out.resolve()))
        entry: dict[str, Any] = {"path": str(rel)}
        hist = runs.read_history(m) if m.is_dir() else []
        if hist:
            entry["best_epoch"], entry["val_accuracy"] = runs.best_epoch(hist)
        entries.append(entry)
    runs.write_json(out / runs.ENSEMBLE, {"members": entries, "data": data})
    return out / runs.ENSEMBLE


def _relpath(p: Path, start: Path) -> str:
    import os

    return os.path.relpath(p, start)


def train_ensemble(out: Path, templates: list[Path], seeds: list[int], epochs: int | None = None,
                   run_fit: Callable[..., dict] = fit) -> list[dict]:
    """Train one member per (template run config, seed) into ``out/<template>_s<seed>``; resumable."""
    results, members, data = [], [], ""
    for t in templates:
        conf = runs.read_json(t / runs.CONFIG)
        for seed in seeds:
            mcfg = ModelConfig.from_dict(conf["model"])
            tcfg = TrainConfig.from_dict(conf["train"])
            tcfg.random_seed = seed
            if epochs:
                tcfg.epochs = epochs
            data = tcfg.data
            run = out / f"{t.name}_s{seed}"
            resume = (run / runs.LAST).exists()
            results.append(run_fit(run, None if resume else mcfg, None if resume else tcfg, resume=resume))
            members.append(run)
    write_ensemble(out, members, data)
    return results


def pseudo_label(models: list, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask of confident rows, one-hot targets of the predicted class) from teacher models."""
    from fer_train.evaluate import predict_probs

    probs = predict_probs(models, x, tta="flip")
    keep = probs.max(1) >= threshold
    return keep, np.eye(NUM_CLASSES, dtype=np.float32)[probs.argmax(1)]


def self_train(teacher: Path, out: Path, threshold: float = 0.8, unlabelled: Path | None = None,
               epochs: int | None = None, run_fit: Callable[..., dict] = fit, log: Callable[[str], None] = print
               ) -> dict[str, Any]:
    """Pseudo-label unlabelled faces with ``teacher`` and retrain a student with the same config.

    The unlabelled set is the teacher's hidden Training rows (``fit --hide-labels``) or a course
    ``test.csv``. Returns both runs' validation accuracy and the pseudo-label statistics.
    """
    from fer_train.evaluate import evaluate, load_members

    conf = runs.read_json(teacher / runs.CONFIG)
    mcfg, tcfg = ModelConfig.from_dict(conf["model"]), TrainConfig.from_dict(conf["train"])
    source = load_source(tcfg.data, tcfg.validate, tcfg.random_seed)
    if unlabelled is not None:
        pool: Split = load_course_test(unlabelled)
    elif tcfg.hide_labels > 0:
        train = source["train"]
        if tcfg.limit_train:
            train = train.subset(np.arange(min(tcfg.limit_train, len(train))))
        pool = train.subset(np.flatnonzero(hidden_label_mask(len(train), tcfg.hide_labels, tcfg.random_seed)))
    else:
        raise ValueError(f"{teacher} saw every training label; train the teacher with --hide-labels 0.1 "
                         "or pass --unlabelled test.csv")
    keep, targets = pseudo_label(load_members(teacher), pool.x, threshold)
    info: dict[str, Any] = {"unlabelled": len(pool), "pseudo_labelled": int(keep.sum()), "threshold": threshold}
    if (pool.y >= 0).all():
        info["pseudo_label_accuracy"] = float((targets.argmax(1)[keep] == pool.y[keep]).mean()) if keep.any() else None
    log(f"pseudo-labelled {info['pseudo_labelled']}/{len(pool)} faces at confidence >= {threshold}")
    if epochs:
        tcfg.epochs = epochs
    student = out / "student"
    resume = (student / runs.LAST).exists()
    run_fit(student, None if resume else mcfg, None if resume else tcfg, resume=resume, source=source,
            extra_train=(pool.x[keep], targets[keep]))
    split = source.validation if source.validation == "PublicTest" else "val"
    t_acc = evaluate(teacher, split, source=source)["accuracy"]
    s_acc = evaluate(student, split, source=source)["accuracy"]
    info.update({"split": split, "teacher": str(teacher), "teacher_accuracy": t_acc, "student": str(student),
                 "student_accuracy": s_acc, "gain": s_acc - t_acc})
    runs.write_json(out / "self_training.json", info)
    return info
