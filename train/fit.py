"""Fitting one model into a resumable run directory."""
from __future__ import annotations

import math
import platform
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_runtime.atomic import atomic_write
from fer_runtime.labels import LABELS, NUM_CLASSES
from fer_runtime.machine import cpu_model, machine_line
from fer_runtime.manifest import sha256_file
from fer_train import runs, schedules
from fer_train.config import (TrainConfig, data_record, missing_input, read_run_config,  # noqa: F401 (re-export)
                              stored_inputs)
from fer_train.data import DataSource, Split, load_source
from fer_train.models import ModelConfig, build_model
from fer_train.pipeline import make_dataset
from fer_train.plots import plot_run_curves
from fer_train.selftrain import split_hidden
from fer_train.validation import Float32Validation

def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of ``cfg``'s schedule for 0-based ``epoch``."""
    return schedules.lr_at(cfg.schedule, cfg.lr, cfg.epochs, cfg.warmup_epochs, epoch, cfg.cycles)


def make_optimizer(cfg: TrainConfig) -> Any:
    """The Keras optimizer ``cfg.optimizer`` names at ``cfg.lr`` (SGD: Nesterov momentum 0.9; decoupled weight decay
    for adamw and sgd)."""
    import keras

    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.RMSprop(cfg.lr)


def environment() -> dict[str, Any]:
    """Versions, devices and CPU of this machine, as config.json records where a run started (``environment``)
    and where each resume continued it (``resumed``, with the first epoch and the precision)."""
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "machine": platform.machine(),
        "cpu": cpu_model(),
    }


def summary_table(model) -> str:
    """One plain-text table of the model's layers (name, type, output shape, parameters) and its totals."""
    rows = [("layer", "type", "output shape", "params")]
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = "x".join("N" if d is None else str(d) for d in shape.shape) if shape is not None else "?"
        rows.append((layer.name, type(layer).__name__, shape, f"{layer.count_params():,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = model.count_params()
    out = [f"Model: {model.name}", line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:]),
           "", f"Total params: {total:,} (trainable {trainable:,}, non-trainable {total - trainable:,})"]
    return "\n".join(out) + "\n"


def write_summary(model, run: Path, extra: str = "") -> None:
    """Write summary.txt: the layer table, and ``extra`` (the best epoch once there is one)."""
    atomic_write(run / runs.SUMMARY, summary_table(model) + extra)


def class_weight_vector(y: np.ndarray) -> np.ndarray:
    """Per-class weights inversely proportional to the class counts of ``y``."""
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    w = len(y) / (NUM_CLASSES * np.maximum(counts, 1))
    return w.astype(np.float32)


def _setup(cfg: TrainConfig, precision: str):
    import keras

    from fer_train.distribute import make_strategy
    from fer_train.precision import POLICY

    strategy = make_strategy(cfg.strategy)  # first: MultiWorkerMirroredStrategy configures the TF runtime
    keras.mixed_precision.set_global_policy(POLICY[precision])
    keras.utils.set_random_seed(cfg.random_seed)
    return strategy


def training_targets(cfg: TrainConfig, train: Split, data_rows: int,
                     log: Callable[[str], None] = print, run: Path | None = None) -> np.ndarray:
    """Targets [N,7] for ``train``: one-hot labels, blended with FER+ votes and/or a teacher as configured.

    ``data_rows`` is the data file's row count (FER+ votes must match it row for row). The teacher's
    probabilities are cached in ``run`` (``runs.TEACHER_PROBS``), so a resumed run reads them back.
    """
    from fer_train import targets

    parts = []
    if cfg.ferplus_weight > 0:
        dist, mask = targets.ferplus_targets(cfg.ferplus, train, data_rows)
        log(f"FER+ votes for {int(mask.sum())}/{len(train)} rows, weight {cfg.ferplus_weight:g}")
        parts.append((cfg.ferplus_weight, dist, mask))
    if cfg.live_teacher:
        # the teacher's share is added per batch (live_teacher_targets); these targets fill the rest, 1 - w
        w = cfg.distill_weight
        return targets.blend(train.y, [(min(1.0, f / (1 - w)), t, m) for f, t, m in parts] if w < 1 else [])
    if cfg.distill_weight > 0:
        log(f"teacher {cfg.teacher}: probabilities on {len(train)} training images "
            f"({cfg.teacher_tta} TTA, T={cfg.distill_temperature:g})")
        cache = run / runs.TEACHER_PROBS if run is not None else None
        parts.append((cfg.distill_weight, targets.teacher_targets(cfg.teacher, train.x, cfg.distill_temperature,
                                                                  cfg.teacher_tta, cache), None))
    return targets.blend(train.y, parts)


def live_teacher_targets(cfg: TrainConfig, precision: str, log: Callable[[str], None] = print) -> tuple[Any, float] | None:
    """``(f, w)`` for :func:`fer_train.pipeline.make_dataset` when the run's teacher is live, else None."""
    if not cfg.live_teacher:
        return None
    from fer_train import targets

    log(f"teacher {cfg.teacher}: live, on every augmented batch ({cfg.teacher_tta} TTA, T={cfg.distill_temperature:g}, "
        f"weight {cfg.distill_weight:g})")
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    return targets.live_teacher(cfg.teacher, cfg.distill_temperature, cfg.teacher_tta, dtype), cfg.distill_weight


def _check_data(run: Path, conf: dict[str, Any], data: str, train_rows: int, val_rows: int, extra_rows: int) -> None:
    """Refuse to resume on data whose split sizes or sha256 differ from the ones recorded when the run started, or
    with another number of ``extra_train`` (self-training) rows."""
    rec = conf.get("data", {})
    if (started := rec.get("extra_rows", 0)) != extra_rows:
        raise runs.RunError(f"{run}: a self-training student that trained on {started} pseudo-labelled rows besides "
                            f"its data; continue it with fer-train self-train, which adds them again" if started else
                            f"{run}: trained without pseudo-labelled rows; it cannot continue with {extra_rows}")
    if (rec.get("train_rows"), rec.get("val_rows")) not in ((train_rows, val_rows), (None, None)):
        raise runs.RunError(f"{run}: the data has {train_rows} training / {val_rows} validation rows, but the run "
                            f"started on {rec.get('train_rows')} / {rec.get('val_rows')}; pass the same data with --data")
    if rec.get("sha256") and Path(data).is_file() and (now := sha256_file(Path(data))) != rec["sha256"]:
        raise runs.RunError(f"{run}: {data} is not the file the run started on (sha256 {now[:12]}..., recorded "
                            f"{rec['sha256'][:12]}... for {rec.get('file', 'its data')}); pass the same data with --data")


def _teacher_record(cfg: TrainConfig) -> dict[str, Any] | None:
    """How config.json identifies a distilled run's teacher: a sha256 over its member files and their count."""
    if cfg.distill_weight <= 0:
        return None
    from fer_train import targets

    return {"sha256": targets.teacher_sha256(cfg.teacher), "members": len(runs.member_paths(cfg.teacher))}


def _check_teacher(run: Path, conf: dict[str, Any], cfg: TrainConfig, now: dict[str, Any] | None) -> None:
    """Refuse to resume with a teacher whose member files differ from the ones recorded when the run started (runs
    from before the record are not checked; a record in member order, as written before the order was ignored, is
    compared in that order)."""
    from fer_train import targets

    rec = conf.get("teacher")
    if (rec and now and rec.get("sha256") != now["sha256"]
            and rec.get("sha256") != targets.legacy_teacher_sha256(cfg.teacher)):
        raise runs.RunError(f"{run}: teacher {cfg.teacher} is not the one the run started with (sha256 "
                            f"{now['sha256'][:12]}... of {now['members']} member(s), recorded {str(rec.get('sha256'))[:12]}... "
                            f"of {rec.get('members', '?')}); pass the same teacher with --teacher")


def _mend_a_kill_between_saves(model: Any, run: Path, history: list[dict[str, Any]], steps: int,
                               validation: Float32Validation, precision: str, log: Callable[[str], None]) -> None:
    """Bring a resumed run's files back into step after a kill in the middle of an epoch's saves (the Recorder
    writes last.keras, then the history row, then best.keras). ``model`` holds last.keras, whose epoch was trained in
    ``precision``.

    - Killed after last.keras but before the row: the optimizer has run ``steps`` more iterations than the history
      has epochs. The row is rebuilt from a validation pass (the training loss and accuracy of that epoch are lost:
      NaN), so the epoch is not trained twice.
    - Killed after the row but before best.keras, when that epoch is the best: best.keras is re-saved from it.
    """
    iterations = int(model.optimizer.iterations.numpy())
    if iterations == (len(history) + 1) * steps:
        scores = validation.scores(model)
        row = runs.history_row(len(history) + 1, {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]},
                               np.asarray(model.optimizer.learning_rate), float("nan"), precision)
        history.append(row)
        runs.write_history(run, history)
        log(f"{run}: epoch {row['epoch']} was saved but not recorded (interrupted); its history row is rebuilt from "
            f"a validation pass (val_acc {row['val_accuracy']:.4f}; its training loss is lost)")
    if history and runs.best_epoch(history)[0] == len(history):  # last.keras is the best epoch: best.keras must be it
        runs.save_keras(model, run / runs.BEST, include_optimizer=False)


def fit(run: Path, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None, *,
        resume: bool = False, source: DataSource | None = None, extra_train: tuple[np.ndarray, np.ndarray] | None = None,
        log: Callable[[str], None] = print, progress: Callable[[int, int, int], None] | None = None,
        moved: dict[str, str] | None = None) -> dict[str, Any]:
    """Train into ``run`` (new, or continued with ``resume=True``) and return the run's result dict.

    ``extra_train`` adds (images, soft targets) rows to training, used by self-training.
    ``moved`` (resume only) gives new paths for the run's inputs (``data``, ``ferplus``, ``teacher``), for a run
    resumed on another machine; the data must have the recorded row counts, and config.json is updated.
    ``progress(epoch, step, steps)`` is called per batch. Keras' global dtype policy is set for the run's
    precision and restored afterwards.
    """
    import keras

    policy = keras.mixed_precision.global_policy()  # the run's precision is set for the run only
    try:
        return _fit(run, model_cfg, cfg, resume=resume, source=source, extra_train=extra_train, log=log,
                    progress=progress, moved=moved)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _check_init_validation(cfg: TrainConfig) -> None:
    """RunError if ``--init``'s run drew other validation rows from the same data: some of this run's validation
    rows would be rows the weights it starts from were trained on."""
    from fer_train.evaluate import data_path_of, validation_settings

    theirs = validation_settings(cfg.init)
    ours = (cfg.val_fraction, cfg.validation_seed)
    if (not theirs or theirs == {ours}
            or Path(data_path_of(runs.member_paths(cfg.init)[0])).resolve() != Path(cfg.data).resolve()):
        return
    frac, seed = min(theirs)
    raise runs.RunError(f"--init {cfg.init} drew its validation rows from {Path(cfg.data).name} with fraction {frac:g} "
                        f"and seed {seed}; this run's ({ours[0]:g}, seed {ours[1]}) would validate on rows those "
                        f"weights trained on: add --split-seed {seed} --val-fraction {frac:g}")


def _fit(run: Path, model_cfg: ModelConfig | None, cfg: TrainConfig | None, *, resume: bool,
         source: DataSource | None, extra_train: tuple[np.ndarray, np.ndarray] | None, log: Callable[[str], None],
         progress: Callable[[int, int, int], None] | None, moved: dict[str, str] | None) -> dict[str, Any]:
    """The body of :func:`fit`."""
    import keras

    run = Path(run)
    if resume:
        conf, model_cfg, cfg = read_run_config(run)
        if not (run / runs.LAST).exists():
            raise runs.RunError(f"{run}: nothing to resume (no {runs.LAST}); start it again without --resume")
        if moved:
            cfg = replace(cfg, **moved)
        if source is None and (msg := missing_input(run, conf, cfg)):
            raise runs.RunError(msg)
    else:
        if moved:
            raise ValueError("new input paths apply only to a resumed run")
        assert model_cfg is not None and cfg is not None
        if (run / runs.HISTORY).exists():
            raise runs.RunError(f"{run}: already holds a run; use --resume or another --out")
    cfg.validate()
    if extra_train is not None and cfg.live_teacher:  # the live teacher would relabel the pseudo-labels too
        raise ValueError("self-training does not support --teacher-mode live; train the teacher run with the "
                         "default, cached")
    model_cfg = model_cfg.effective()
    source = source or load_source(cfg.data, cfg.val_fraction, cfg.validation_seed)
    if cfg.init and not resume and not source.fixed_validation:
        _check_init_validation(cfg)
    train, val = source["train"], source["val"]
    train = split_hidden(train, cfg)[0]

    teacher = _teacher_record(cfg)
    if resume:
        _check_data(run, conf, cfg.data, len(train), len(val), len(extra_train[0]) if extra_train is not None else 0)
        _check_teacher(run, conf, cfg, teacher)
    from fer_train.precision import resolve

    precision, why = resolve(cfg.precision)
    if model_cfg.act_quant and precision != "float32":  # a 16-bit activation cannot hold 256 levels
        if cfg.precision != "auto":
            raise ValueError(f"--act-quant trains in float32 (int8 rounding does not survive {precision} "
                             "activations): use --precision float32 or auto")
        precision, why = "float32", "auto: --act-quant rounds activations to int8, which 16-bit activations cannot hold"
    log(f"precision {precision} ({why}); {machine_line()}")
    strategy = _setup(cfg, precision)
    from fer_train.distribute import worker_run_dir

    run = worker_run_dir(run, strategy)  # multiworker: only the chief writes the run; the others a temp copy
    history = runs.read_history(run) if resume else []
    run.mkdir(parents=True, exist_ok=True)
    trained_in = precision  # the precision of the last epochs (a resumed run's are the previous session's)
    if resume:
        trained_in = conf.get("precision", "float32")
        changed = trained_in != precision
        if changed:
            log(f"{run}: trained in {trained_in} so far; continuing in {precision} on this machine")
            conf["precision"] = precision
        if teacher and conf.get("teacher") != teacher:  # no record, or one in member order: from here on, this one
            log(f"{run}: teacher {cfg.teacher} recorded (sha256 {teacher['sha256'][:12]}...)")
            conf["teacher"] = teacher
            changed = True
        if changed:
            runs.write_json(run / runs.CONFIG, conf)
    else:
        runs.write_json(run / runs.CONFIG, {
            "model": model_cfg.to_dict(), "train": stored_inputs(cfg, run).to_dict(), "labels": list(LABELS),
            "data": {**data_record(cfg.data, run), "layout": source.layout, "validation": source.validation,
                     "train_rows": len(train), "val_rows": len(val),
                     **({"extra_rows": len(extra_train[0])} if extra_train is not None else {})},
            **({"teacher": teacher} if teacher else {}),
            "precision": precision,
            "environment": environment(),
        })
    with strategy.scope():
        # Built under this machine's policy, then the checkpoint's weights and optimizer state are
        # loaded into it: a run may continue in another precision than it started in.
        model = build_model(model_cfg)
        if cfg.strategy == "multiworker":  # every worker must end with the same moving statistics
            from fer_train.distribute import synchronize_batch_norm

            synchronize_batch_norm(model)
        if cfg.init and not resume:  # before compiling: best.keras holds no optimizer state to match
            init = runs.member_paths(cfg.init)[0]
            runs.load_weights(model, init)
            log(f"weights from {init}")
        model.compile(make_optimizer(cfg), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
        if resume:
            model.optimizer.build(model.trainable_variables)
            runs.load_weights(model, run / runs.LAST)
            if history and int(model.optimizer.iterations.numpy()) == 0:  # Keras skipped it with a warning only
                # the rate it had (a plateau schedule's reductions live nowhere else); the next epoch may reset it
                model.optimizer.learning_rate.assign(float(history[-1]["lr"]))
                log(f"{run}: {runs.LAST}'s optimizer state does not fit this {precision} optimizer (mixed_float16 "
                    f"adds a loss scaler), so it starts afresh: weights, epoch count and learning rate carry on, "
                    f"momentum restarts")
    write_summary(model, run)

    x_tr = train.x
    data_rows = 1 + max(int(s.ids.max()) for s in source.splits.values() if len(s))
    t_tr = training_targets(cfg, train, data_rows, log, run)
    if moved:  # every moved input has been read: record where they are now
        conf["train"] = stored_inputs(cfg, run).to_dict()
        conf["data"].update(data_record(cfg.data, run, conf["data"].get("sha256")))  # _check_data compared it
        runs.write_json(run / runs.CONFIG, conf)
        log(f"{run}: inputs now at {', '.join(f'{k}={v}' for k, v in moved.items())}")
    if extra_train is not None:
        x_tr = np.concatenate([x_tr, extra_train[0]])
        t_tr = np.concatenate([t_tr, extra_train[1].astype(np.float32)])
    y_hard = t_tr.argmax(1)
    cw = class_weight_vector(y_hard) if cfg.class_weights else None
    import tensorflow as tf

    def sharded(ds: Any) -> Any:  # each worker reads its own part of the data
        if cfg.strategy != "multiworker":
            return ds
        from fer_train.distribute import shard_by_data

        return shard_by_data(ds)

    def training_batches(augment: Any, **kwargs: Any) -> Any:
        return sharded(make_dataset(x_tr, y_hard, cfg.batch_size, training=True, augment=augment, soft_targets=t_tr,
                                    seed=cfg.random_seed, **kwargs))

    epoch_var = tf.Variable(len(history), dtype=tf.int64, trainable=False)  # keys each epoch's shuffle order
    ds_tr = training_batches(cfg.augment, label_smoothing=cfg.label_smoothing, class_weights=cw, epoch=epoch_var,
                             teacher=live_teacher_targets(cfg, precision, log))
    ds_va = sharded(make_dataset(val.x, val.y, 256, training=False))
    steps = math.ceil(len(x_tr) / cfg.batch_size)
    with strategy.scope():
        validation = Float32Validation(model_cfg, ds_va, precision)
    if resume:
        _mend_a_kill_between_saves(model, run, history, steps, validation, trained_in, log)
    start = len(history)
    snapshots = schedules.cycle_ends(cfg.epochs, cfg.warmup_epochs, cfg.cycles)
    patience = cfg.epochs if snapshots or cfg.swa_start else cfg.patience  # cycles and averaging run to the end
    if start >= cfg.epochs:
        log(f"{run}: already trained {start}/{cfg.epochs} epochs")
    elif runs.stopped_early(history, patience):
        log(f"{run}: stopped early after {start}/{cfg.epochs} epochs (no val_accuracy gain for {patience})")
    else:
        if resume:  # which machine trains from here: config.json's environment is where the run started
            conf.setdefault("resumed", []).append({"from_epoch": start + 1, "precision": precision, **environment()})
            runs.write_json(run / runs.CONFIG, conf)
        current = {"epoch": start}

        def on_batch(step: int) -> None:
            if progress:
                progress(current["epoch"], step, steps)

        from fer_train.callbacks import Recorder, ResumablePlateau

        fixed_lr = cfg.schedule != "plateau"  # ReduceLROnPlateau owns the rate after the first full-rate epoch
        if snapshots:
            log(f"{cfg.cycles} cosine cycles: snapshot members at epochs {', '.join(map(str, snapshots))}; "
                "no early stopping (each cycle restarts the rate)")
        if cfg.swa_start:
            log(f"weights averaged from epoch {cfg.swa_start} to {cfg.epochs}: no early stopping")
        rec = Recorder(run, history, epochs=cfg.epochs, patience=patience,
                       precision=precision, snapshot_epochs=snapshots,
                       lr_for_epoch=lambda e: lr_at(cfg, e) if fixed_lr or e <= cfg.warmup_epochs else None,
                       on_batch=on_batch, log=log)

        class _EpochTracker(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                current["epoch"] = epoch
                epoch_var.assign(epoch)  # before Keras starts the epoch's data iterator

        # validation first: rec and the rest read its val_accuracy; rec saves last.keras before the averager its mean
        callbacks = [_EpochTracker(), validation.callback(), rec]
        if cfg.swa_start:
            from fer_train.swa import WeightAverager

            averager = WeightAverager(run, cfg.swa_start, log)
            averager.resume(start, model)
            callbacks.append(averager)
        if cfg.schedule == "plateau":
            callbacks.append(ResumablePlateau(history, factor=0.5, patience=4, min_lr=1e-6))
        warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")
        model.fit(ds_tr, epochs=cfg.epochs, initial_epoch=start, callbacks=callbacks, verbose=0)
    if cfg.strategy == "multiworker":
        from fer_train.distribute import weights_digest

        log(f"final weights sha256 {weights_digest(model)} (the same on every worker)")
    be, bv = runs.best_epoch(history)
    result = {"run": str(run), "epochs_done": len(history), "best_epoch": be, "best_val_accuracy": bv,
              "params": int(model.count_params()), "minutes_per_epoch": float(np.nanmean([r["seconds"] for r in history]) / 60) if history else None}
    if cfg.swa_start:
        from fer_train import swa

        # batch norm from the augmented training images, not blended ones: mixup/CutMix images are no test faces
        bn_batches = training_batches(replace(cfg.augment, mixup=0.0, cutmix=0.0))
        done = swa.finish(model, run, bn_batches.take(steps), lambda m: validation.scores(m)["accuracy"], log)  # model now holds the mean weights
        result["swa_val_accuracy"] = done["val_accuracy"] if done else None
    write_summary(model, run, extra=f"Best val_accuracy {bv:.4f} at epoch {be} of {len(history)}\n")
    plot_run_curves(run)
    return result
