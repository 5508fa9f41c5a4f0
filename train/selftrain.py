"""Semi-supervised self-training, and the hidden-label split it shares with ``fit --hide-labels``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_runtime.labels import NUM_CLASSES
from fer_train import runs
from fer_train.config import TrainConfig, read_run_config, refuse_new_epochs
from fer_train.data import TRAINING_SPLITS, Split, load_course_test, load_source



def hidden_label_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the Training rows whose labels self-training hides (reproducible)."""
    mask = np.zeros(n, bool)
    if fraction > 0:
        rng = np.random.default_rng(seed + 7)
        mask[rng.choice(n, int(round(n * fraction)), replace=False)] = True
    return mask


def split_hidden(train: Split, cfg: TrainConfig) -> tuple[Split, Split]:
    """(labelled rows, hidden rows) of ``train`` as a run with ``cfg`` sees it (``limit_train`` applied first)."""
    if cfg.limit_train:
        train = train.subset(np.arange(min(cfg.limit_train, len(train))))
    hidden = hidden_label_mask(len(train), cfg.hide_labels, cfg.random_seed)
    return train.subset(np.flatnonzero(~hidden)), train.subset(np.flatnonzero(hidden))


def pseudo_label(models: list, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask of confident rows, one-hot targets of the predicted class) from teacher models."""
    from fer_train.inference import predict_probs

    probs = predict_probs(models, x, tta="flip")
    keep = probs.max(1) >= threshold
    return keep, np.eye(NUM_CLASSES, dtype=np.float32)[probs.argmax(1)]


def self_train(teacher: Path, out: Path, threshold: float = 0.8, unlabelled: Path | None = None,
               epochs: int | None = None, *, run_fit: Callable[..., dict], log: Callable[[str], None] = print
               ) -> dict[str, Any]:
    """Pseudo-label unlabelled faces with ``teacher`` and retrain a student with the same config.

    The unlabelled set is the teacher's hidden Training rows (``fit --hide-labels``) or a course
    ``test.csv``. ``run_fit`` is :func:`fer_train.fit.fit` or a wrapper of it. Returns both runs' validation accuracy and the pseudo-label statistics.
    """
    from fer_train.evaluate import evaluate
    from fer_train.inference import load_models

    _, mcfg, tcfg = read_run_config(teacher)
    student = out / "student"
    if resume := (student / runs.LAST).exists():
        refuse_new_epochs(student, epochs)  # before the pseudo-labelling, which takes a while
    source = load_source(tcfg.data, tcfg.val_fraction, tcfg.validation_seed)
    dropped = 0
    if unlabelled is not None:
        pool: Split = load_course_test(unlabelled)
        # a course test.csv holds FER2013's PublicTest and PrivateTest faces: never train on what is scored
        held_out = {row.tobytes() for name, split in source.splits.items() if name not in TRAINING_SPLITS
                    for row in split.x}
        fresh = np.array([row.tobytes() not in held_out for row in pool.x], bool)
        dropped = int((~fresh).sum())
        if dropped == len(pool):
            raise ValueError(f"every face in {unlabelled.name} is a row of {source.path.name}'s validation or test "
                             "splits, which must stay unseen: nothing to pseudo-label")
        if dropped:
            log(f"left out {dropped} of {len(pool)} unlabelled faces: they are rows of {source.path.name}'s "
                "validation or test splits")
            pool = pool.subset(np.flatnonzero(fresh))
    elif tcfg.hide_labels > 0:
        pool = split_hidden(source["train"], tcfg)[1]
    else:
        raise ValueError(f"{teacher} saw every training label; train the teacher with --hide-labels 0.1 "
                         "or pass --unlabelled test.csv")
    keep, targets = pseudo_label(load_models(teacher), pool.x, threshold)
    info: dict[str, Any] = {"unlabelled": len(pool), "held_out_left_out": dropped, "pseudo_labelled": int(keep.sum()),
                            "threshold": threshold}
    if (pool.y >= 0).all():
        info["pseudo_label_accuracy"] = float((targets.argmax(1)[keep] == pool.y[keep]).mean()) if keep.any() else None
    log(f"pseudo-labelled {info['pseudo_labelled']}/{len(pool)} faces at confidence >= {threshold}")
    if epochs:
        tcfg.epochs = epochs
    run_fit(student, None if resume else mcfg, None if resume else tcfg, resume=resume, source=source,
            extra_train=(pool.x[keep], targets[keep]))
    split = source.validation if source.fixed_validation else "val"
    t_acc = evaluate(teacher, split, source=source)["accuracy"]
    s_acc = evaluate(student, split, source=source)["accuracy"]
    info.update({"split": split, "teacher": str(teacher), "teacher_accuracy": t_acc, "student": str(student),
                 "student_accuracy": s_acc, "gain": s_acc - t_acc})
    runs.write_json(out / "self_training.json", info)
    return info
