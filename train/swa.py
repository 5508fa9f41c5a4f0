"""Stochastic weight averaging (Izmailov et al. 2018): the mean of a run's weights over its last epochs.

From epoch ``swa_start`` (1-based) on, the trainable weights at the end of each epoch are added to a
running mean kept in ``runs.SWA_STATE`` (saved after ``last.keras`` each epoch, so a resumed run goes on
averaging). When the run ends, the mean replaces the weights, batch-norm statistics are recomputed for
it over one pass of the training data (the moving statistics of the separate epochs do not fit the
averaged weights), and the model is saved as ``runs.SWA_MODEL``: a member like ``best.keras``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import keras
import numpy as np

from fer_runtime.atomic import atomic_path
from fer_train import runs


class WeightAverager(keras.callbacks.Callback):
    """Adds the trainable weights to the running mean at the end of each epoch from ``start`` (1-based) on."""

    def __init__(self, run: Path, start: int, log: Callable[[str], None] = print):
        super().__init__()
        self.run, self.start, self.log = Path(run), start, log
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    def resume(self, epochs_done: int) -> None:
        """Read the saved mean of a run that has ``epochs_done`` epochs (call before training)."""
        state = read_state(self.run)
        if state is None:
            return
        mean, count, epoch = state
        if epoch > epochs_done:
            raise runs.RunError(f"{self.run / runs.SWA_STATE}: averaged up to epoch {epoch}, but the run has only "
                                f"{epochs_done}; remove it to restart the average")
        if epoch < epochs_done:  # the run stopped between saving last.keras and the mean
            self.log(f"{runs.SWA_STATE}: epoch {epochs_done} is missing from the average ({count} epochs up to {epoch})")
        self.mean, self.count = mean, count

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self.start:
            return
        w = [np.asarray(v.numpy(), np.float64) for v in self.model.trainable_weights]
        if self.mean is None:
            self.mean, self.count = w, 1
        else:
            self.count += 1
            self.mean = [m + (x - m) / self.count for m, x in zip(self.mean, w)]
        write_state(self.run, self.mean, self.count, epoch + 1)


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
    except (OSError, ValueError, KeyError) as e:
        raise runs.RunError(f"{path}: unreadable ({e.__class__.__name__}); remove it to restart the average") from None


def recompute_batch_norm(model: Any, batches: Iterable[Any]) -> int:
    """Set every BatchNormalization layer's moving statistics to their mean over ``batches`` (images, or
    (images, targets) pairs) in training mode, as torch.optim.swa_utils.update_bn does; returns the batch count.

    Keras updates ``moving = moving * momentum + batch * (1 - momentum)``; a momentum of (k-1)/k at the
    k-th batch makes that the plain mean of the batch statistics.
    """
    bns = [l for l in _all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
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


def _all_layers(model: Any) -> list[Any]:
    out = []
    for l in model.layers:
        out.extend(_all_layers(l) if hasattr(l, "layers") else [l])
    return out


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
