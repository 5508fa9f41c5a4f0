"""Stochastic weight averaging (Izmailov et al. 2018): the mean of a run's weights over its last epochs.

From epoch ``swa_start`` (1-based) on, the trainable weights at the end of each epoch are added to a
running mean kept in ``runs.SWA_STATE`` (saved after ``last.keras`` each epoch, so a resumed run goes on
averaging). When the run ends, the mean replaces the weights, batch-norm statistics are recomputed for
it over one pass of the training data (the moving statistics of the separate epochs do not fit the
averaged weights), and the model is saved as ``runs.SWA_MODEL``: a member like ``best.keras``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import keras
import numpy as np

from fer_runtime.atomic import atomic_path
from fer_train import runs
from fer_train.models import all_layers


class WeightAverager(keras.callbacks.Callback):
    """Adds the trainable weights to the running mean at the end of each epoch from ``start`` (1-based) on."""

    def __init__(self, run: Path, start: int, log: Callable[[str], None] = print):
        super().__init__()
        self.run, self.start, self.log = Path(run), start, log
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    def resume(self, epochs_done: int, model: Any = None) -> None:
        """Read the saved mean of a run that has ``epochs_done`` epochs (call before training). ``model`` holds the
        run's last.keras, the weights of epoch ``epochs_done``: if the run stopped between saving them and the
        mean, they are added now, so no epoch is missing from the average."""
        state = read_state(self.run)
        if state is not None:
            self.mean, self.count, last = state
            if last > epochs_done:
                raise runs.RunError(f"{self.run / runs.SWA_STATE}: averaged up to epoch {last}, but the run has only "
                                    f"{epochs_done}; remove it to restart the average")
        else:
            last = min(epochs_done, self.start - 1)  # nothing averaged yet: none missing before the start epoch
        missing = epochs_done - last
        if missing == 1 and model is not None:
            self.set_model(model)
            self._add(epochs_done)
            self.log(f"{runs.SWA_STATE}: epoch {epochs_done} added to the average from last.keras (the run stopped "
                     "before saving the average)")
        elif missing:
            which = f"epoch {epochs_done} is" if missing == 1 else f"epochs {last + 1}-{epochs_done} are"
            self.log(f"{runs.SWA_STATE}: {which} missing from the average ({self.count} epochs up to {last})")

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.start:
            self._add(epoch + 1)

    def _add(self, epoch: int) -> None:
        """Add the model's trainable weights (those of ``epoch``, 1-based) to the mean and save it."""
        w = [np.asarray(v.numpy(), np.float64) for v in self.model.trainable_weights]
        if self.mean is None:
            self.mean, self.count = w, 1
        else:
            self.count += 1
            self.mean = [m + (x - m) / self.count for m, x in zip(self.mean, w)]
        write_state(self.run, self.mean, self.count, epoch)


def write_state(run: Path, mean: list[np.ndarray], count: int, epoch: int) -> None:
    """Save the running mean (float64, so that long averages do not drift) atomically."""
    with atomic_path(Path(run) / runs.SWA_STATE) as tmp, open(tmp, "wb") as f:
        np.savez(f, count=count, epoch=epoch, **{f"w{i}": m for i, m in enumerate(mean)})


def read_state(run: Path) -> tuple[list[np.ndarray], int, int] | None:
    """(mean weights, epochs averaged, last epoch averaged), or None if the run has no average yet."""
    path = Path(run) / runs.SWA_STATE
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            n = sum(1 for k in f.files if k.startswith("w"))
            return [f[f"w{i}"] for i in range(n)], int(f["count"]), int(f["epoch"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise runs.RunError(f"{path}: unreadable ({e.__class__.__name__}); remove it to restart the average") from None


def recompute_batch_norm(model: Any, batches: Iterable[Any]) -> int:
    """Set every BatchNormalization layer's moving statistics to their mean over ``batches`` (images, or
    (images, targets) pairs) in training mode, as torch.optim.swa_utils.update_bn does; returns the batch count.

    Keras updates ``moving = moving * momentum + batch * (1 - momentum)``; a momentum of (k-1)/k at the
    k-th batch makes that the plain mean of the batch statistics.
    """
    bns = [l for l in all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    k = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            k += 1
            for l in bns:
                l.momentum = (k - 1) / k
            model(x, training=True)
    finally:
        for l, m in zip(bns, saved):
            l.momentum = m
    return k




def finish(model: Any, run: Path, batches: Iterable[Any], evaluate: Callable[[Any], float],
           log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Give ``model`` the run's mean weights, recompute its batch norm over ``batches``, save
    ``runs.SWA_MODEL`` and ``runs.SWA_RESULT``; None if nothing was averaged. ``evaluate(model)`` gives
    its validation accuracy."""
    state = read_state(run)
    if state is None:
        return None
    mean, count, epoch = state
    for v, m in zip(model.trainable_weights, mean):
        v.assign(m.astype(v.dtype))
    n = recompute_batch_norm(model, batches)
    runs.save_keras(model, Path(run) / runs.SWA_MODEL, include_optimizer=False)
    result = {"epochs_averaged": count, "last_epoch": epoch, "bn_batches": n, "val_accuracy": float(evaluate(model))}
    runs.write_json(Path(run) / runs.SWA_RESULT, result)
    log(f"{runs.SWA_MODEL}: mean of the weights of {count} epochs (to {epoch}), batch norm over {n} batches, "
        f"val_accuracy {result['val_accuracy']:.4f}")
    return result
