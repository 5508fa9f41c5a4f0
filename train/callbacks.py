"""The Keras callback of a run: history.csv, best/last checkpoints, early stopping, curves, progress.

Kept apart from :mod:`fer_train.fit` because it subclasses a Keras class: importing it imports Keras.
It knows nothing of the training configuration beyond what it is given.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from fer_train import runs
from fer_train.plots import plot_run_curves


class Recorder(keras.callbacks.Callback):
    """Records each epoch of a run and saves its checkpoints (see the module docstring).

    ``lr_for_epoch(epoch)`` gives the rate to set at the start of a 0-based epoch, or None to leave it
    (a plateau schedule after warm-up). Training stops after ``patience`` epochs without a gain.
    At the end of the k-th epoch of ``snapshot_epochs`` (1-based) the weights are saved as
    ``runs.snapshot_name(k)``: one member per cosine cycle.
    """

    def __init__(self, run: Path, history: list[dict[str, Any]], *, epochs: int, patience: int,
                 lr_for_epoch: Callable[[int], float | None], precision: str = "float32",
                 snapshot_epochs: Sequence[int] = (), on_batch: Callable[[int], None] | None = None,
                 log: Callable[[str], None] = print):
        super().__init__()
        self.run, self.history, self.epochs, self.patience = run, history, epochs, patience
        self.snapshot_epochs = list(snapshot_epochs)
        self.lr_for_epoch, self.precision = lr_for_epoch, precision
        self.on_batch, self.log = on_batch, log
        self.t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()
        lr = self.lr_for_epoch(epoch)
        if lr is not None:
            self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch, logs=None):
        if self.on_batch:
            self.on_batch(batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = runs.history_row(epoch + 1, logs, np.asarray(self.model.optimizer.learning_rate), time.time() - self.t0,
                               self.precision)
        prev_best = runs.best_epoch(self.history)[1] if self.history else -1.0
        if epoch + 1 in self.snapshot_epochs:
            k = self.snapshot_epochs.index(epoch + 1) + 1
            runs.save_keras(self.model, self.run / runs.snapshot_name(k), include_optimizer=False)
            self.log(f"snapshot member {k} saved: {runs.snapshot_name(k)}")
        # last.keras, then the history row, then best.keras: a kill before the row leaves best.keras matching the
        # history; a kill after it is mended on --resume (fit re-saves best.keras when the last epoch is the best).
        runs.save_keras(self.model, self.run / runs.LAST, include_optimizer=True)
        self.history.append(row)
        runs.write_history(self.run, self.history)
        if row["val_accuracy"] > prev_best:
            runs.save_keras(self.model, self.run / runs.BEST, include_optimizer=False)
        plot_run_curves(self.run)
        be, bv = runs.best_epoch(self.history)
        self.log(f"epoch {epoch + 1}/{self.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
                 f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2e}  "
                 f"{row['seconds']:.0f}s  (best {bv:.4f} @ {be})")
        if runs.stopped_early(self.history, self.patience):
            self.log(f"early stop: no val_accuracy gain for {self.patience} epochs")
            self.model.stop_training = True


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` on ``val_accuracy`` that a resumed run continues where it stopped: its best value and
    wait count are replayed from the run's ``history`` rows (a fresh one would take the first resumed epoch for
    an improvement and cut the rate up to ``patience`` epochs late)."""

    def __init__(self, history: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__("val_accuracy", mode="max", **kwargs)
        self.history = history

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        for row in self.history:  # the rows trained before this call, as on_epoch_end saw them
            v = row["val_accuracy"]
            if not np.isfinite(v):  # a row rebuilt after a kill: not validated
                continue
            if self.cooldown_counter > 0:  # the steps of ReduceLROnPlateau.on_epoch_end
                self.cooldown_counter -= 1
                self.wait = 0
            if self.best is None or v - self.min_delta > self.best:
                self.best, self.wait = v, 0
            elif self.cooldown_counter == 0:
                self.wait += 1
                if self.wait >= self.patience:  # the rate was cut at that epoch (unless already at min_lr)
                    self.wait, self.cooldown_counter = 0, self.cooldown
