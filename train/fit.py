"""Fitting one model into a resumable run directory."""
from __future__ import annotations

import math
import platform
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_runtime.labels import LABELS, NUM_CLASSES
from fer_train import runs
from fer_train.data import DataSource, Split, load_source
from fer_train.models import ModelConfig, build_model
from fer_train.pipeline import AugmentConfig, make_dataset
from fer_train.plots import plot_learning_curves

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "plateau")


@dataclass
class TrainConfig:
    """Everything that decides a run besides the architecture."""

    data: str = ""
    validate: float = 0.1
    random_seed: int = 1234
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    class_weights: bool = False
    patience: int = 15
    precision: str = "auto"  # auto | float32 | bfloat16 | mixed_float16 (fer_train.precision)
    strategy: str = "default"  # default | mirrored
    limit_train: int = 0  # use only the first N training rows (0 = all); for smoke tests
    hide_labels: float = 0.0  # fraction of Training withheld as unlabelled (self-training)
    ferplus: str = ""  # ferplus_votes.csv (FER2013 row order); blended into targets with ferplus_weight
    ferplus_weight: float = 0.0
    teacher: str = ""  # run/ensemble whose probabilities are blended into targets with distill_weight
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        legacy = d.pop("mixed_precision", None)  # runs from before --precision
        if legacy is not None and "precision" not in d:
            d["precision"] = "mixed_float16" if legacy else "float32"
        aug = AugmentConfig(**d.pop("augment", {}))
        return cls(**d, augment=aug)

    def validate_choices(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        from fer_train.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.strategy not in ("default", "mirrored"):
            raise ValueError(f"unknown strategy {self.strategy!r}; choose default or mirrored")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be positive")
        for name, w, src in (("ferplus", self.ferplus_weight, self.ferplus), ("teacher", self.distill_weight, self.teacher)):
            if not 0 <= w <= 1:
                raise ValueError(f"{name} weight must be in [0, 1], got {w}")
            if w > 0 and not src:
                raise ValueError(f"a {name} weight needs --{name}")
        if self.ferplus_weight + self.distill_weight > 1:
            raise ValueError("ferplus weight + distill weight must not exceed 1")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch`` (plateau: the base rate; Keras lowers it on plateaus)."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        t = (epoch - cfg.warmup_epochs) / span
        return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** (epoch // max(1, cfg.epochs // 3))
    return cfg.lr


def hidden_label_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the Training rows whose labels self-training hides (reproducible)."""
    mask = np.zeros(n, bool)
    if fraction > 0:
        rng = np.random.default_rng(seed + 7)
        mask[rng.choice(n, int(round(n * fraction)), replace=False)] = True
    return mask


def make_optimizer(cfg: TrainConfig):
    import keras

    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.RMSprop(cfg.lr)


def environment() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "machine": platform.machine(),
    }


def save_model(model, path: Path, include_optimizer: bool) -> None:
    """Save a .keras file atomically (temp file + rename)."""
    import os

    tmp = path.with_name(f".{path.stem}.tmp.keras")
    if include_optimizer:
        model.save(tmp)
    else:
        opt = model.optimizer
        try:
            model.optimizer = None
            model.save(tmp)
        finally:
            model.optimizer = opt
    os.replace(tmp, path)


def plot_curves(run: Path) -> None:
    """Write learning_curves.png from history.csv."""
    h = runs.read_history(run)
    if h:
        plot_learning_curves(h, runs.best_epoch(h), run.name, run / runs.CURVES)


def write_summary(model, run: Path, extra: str = "") -> None:
    lines: list[str] = []
    model.summary(print_fn=lambda s, **k: lines.append(s), line_length=100)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    text = "\n".join(lines) + f"\n\nTotal params: {model.count_params()}\nTrainable params: {trainable}\n" + extra
    runs.atomic_write_text(run / runs.SUMMARY, text)


def class_weight_vector(y: np.ndarray) -> np.ndarray:
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    w = len(y) / (NUM_CLASSES * np.maximum(counts, 1))
    return w.astype(np.float32)


def _setup(cfg: TrainConfig, precision: str):
    import keras
    import tensorflow as tf

    from fer_train.precision import POLICY

    keras.mixed_precision.set_global_policy(POLICY[precision])
    keras.utils.set_random_seed(cfg.random_seed)
    if cfg.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def training_targets(cfg: TrainConfig, train: Split, data_rows: int,
                     log: Callable[[str], None] = print) -> np.ndarray:
    """Targets [N,7] for ``train``: one-hot labels, blended with FER+ votes and/or a teacher as configured.

    ``data_rows`` is the data file's row count (FER+ votes must match it row for row).
    """
    from fer_train import targets

    parts = []
    if cfg.ferplus_weight > 0:
        dist, mask = targets.ferplus_targets(cfg.ferplus, train, data_rows)
        log(f"FER+ votes for {int(mask.sum())}/{len(train)} rows, weight {cfg.ferplus_weight:g}")
        parts.append((cfg.ferplus_weight, dist, mask))
    if cfg.distill_weight > 0:
        log(f"teacher {cfg.teacher}: predicting {len(train)} training images (flip TTA, T={cfg.distill_temperature:g})")
        parts.append((cfg.distill_weight, targets.teacher_targets(cfg.teacher, train.x, cfg.distill_temperature), None))
    return targets.blend(train.y, parts)


def _check_rows(run: Path, conf: dict[str, Any], train_rows: int, val_rows: int) -> None:
    """Refuse to resume on data whose split sizes differ from the ones recorded when the run started."""
    rec = conf.get("data", {})
    if (rec.get("train_rows"), rec.get("val_rows")) not in ((train_rows, val_rows), (None, None)):
        raise runs.RunError(f"{run}: the data has {train_rows} training / {val_rows} validation rows, but the run "
                            f"started on {rec.get('train_rows')} / {rec.get('val_rows')}; pass the same data with --data")


def fit(run: Path, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None, *,
        resume: bool = False, source: DataSource | None = None, extra_train: tuple[np.ndarray, np.ndarray] | None = None,
        log: Callable[[str], None] = print, progress: Callable[[int, int, int], None] | None = None,
        moved: dict[str, str] | None = None) -> dict[str, Any]:
    """Train into ``run`` (new, or continued with ``resume=True``) and return the run's result dict.

    ``extra_train`` adds (images, soft targets) rows to training, used by self-training.
    ``moved`` (resume only) gives new paths for the run's inputs (``data``, ``ferplus``, ``teacher``), for a run
    resumed on another machine; the data must have the recorded row counts, and config.json is updated.
    ``progress(epoch, step, steps)`` is called per batch.
    """
    import keras

    run = Path(run)
    if resume:
        conf = runs.read_json(run / runs.CONFIG)
        model_cfg = ModelConfig.from_dict(conf["model"])
        cfg = TrainConfig.from_dict(conf["train"])
        if not (run / runs.LAST).exists():
            raise runs.RunError(f"{run}: nothing to resume (no {runs.LAST}); start it again without --resume")
        if moved:
            cfg = replace(cfg, **moved)
    else:
        if moved:
            raise ValueError("new input paths apply only to a resumed run")
        assert model_cfg is not None and cfg is not None
        if (run / runs.HISTORY).exists():
            raise runs.RunError(f"{run}: already holds a run; use --resume or another --out")
    cfg.validate_choices()
    model_cfg.validate()
    source = source or load_source(cfg.data, cfg.validate, cfg.random_seed)
    train, val = source["train"], source["val"]
    if cfg.limit_train:
        train = train.subset(np.arange(min(cfg.limit_train, len(train))))
    hidden = hidden_label_mask(len(train), cfg.hide_labels, cfg.random_seed)
    train = train.subset(np.flatnonzero(~hidden))

    if resume:
        _check_rows(run, conf, len(train), len(val))
    from fer_train.precision import resolve

    precision, why = resolve(cfg.precision)
    log(f"precision {precision} ({why})")
    strategy = _setup(cfg, precision)
    history = runs.read_history(run) if resume else []
    run.mkdir(parents=True, exist_ok=True)
    if resume:
        if conf.get("precision") != precision:
            conf["precision"] = precision
            runs.write_json(run / runs.CONFIG, conf)
    else:
        runs.write_json(run / runs.CONFIG, {
            "model": model_cfg.to_dict(), "train": cfg.to_dict(), "labels": list(LABELS),
            "data": {"path": str(cfg.data), "layout": source.layout, "validation": source.validation,
                     "train_rows": len(train), "val_rows": len(val)},
            "precision": precision,
            "environment": environment(),
        })
    with strategy.scope():
        # Built under this machine's policy, then the checkpoint's weights and optimizer state are
        # loaded into it: a run may continue in another precision than it started in.
        model = build_model(model_cfg)
        model.compile(make_optimizer(cfg), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
        if resume:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(run / runs.LAST)
    write_summary(model, run)

    x_tr = train.x
    data_rows = 1 + max(int(s.ids.max()) for s in source.splits.values() if len(s))
    t_tr = training_targets(cfg, train, data_rows, log)
    if moved:  # every moved input has been read: record where they are now
        conf["train"] = cfg.to_dict()
        conf["data"]["path"] = cfg.data
        runs.write_json(run / runs.CONFIG, conf)
        log(f"{run}: inputs now at {', '.join(f'{k}={v}' for k, v in moved.items())}")
    if extra_train is not None:
        x_tr = np.concatenate([x_tr, extra_train[0]])
        t_tr = np.concatenate([t_tr, extra_train[1].astype(np.float32)])
    y_hard = t_tr.argmax(1)
    cw = class_weight_vector(y_hard) if cfg.class_weights else None
    ds_tr = make_dataset(x_tr, y_hard, cfg.batch_size, training=True, augment=cfg.augment,
                         label_smoothing=cfg.label_smoothing, soft_targets=t_tr, class_weights=cw,
                         seed=cfg.random_seed + len(history))
    ds_va = make_dataset(val.x, val.y, 256, training=False)
    steps = math.ceil(len(x_tr) / cfg.batch_size)
    start = len(history)
    if start >= cfg.epochs:
        log(f"{run}: already trained {start}/{cfg.epochs} epochs")
    else:
        current = {"epoch": start}

        def on_batch(step: int) -> None:
            if progress:
                progress(current["epoch"], step, steps)

        from fer_train.callbacks import Recorder

        rec = Recorder(run, cfg, history, on_batch, log, precision)

        class _EpochTracker(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                current["epoch"] = epoch

        callbacks = [_EpochTracker(), rec]
        if cfg.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau("val_accuracy", factor=0.5, patience=4, min_lr=1e-6))
        warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")
        model.fit(ds_tr, validation_data=ds_va, epochs=cfg.epochs, initial_epoch=start, callbacks=callbacks, verbose=0)
    be, bv = runs.best_epoch(history)
    result = {"run": str(run), "epochs_done": len(history), "best_epoch": be, "best_val_accuracy": bv,
              "params": int(model.count_params()), "minutes_per_epoch": float(np.mean([r["seconds"] for r in history]) / 60) if history else None}
    write_summary(model, run, extra=f"Best val_accuracy {bv:.4f} at epoch {be} of {len(history)}\n")
    plot_curves(run)
    return result
