"""Learning-rate schedules: the rate for each epoch, from the run's configuration."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step", "plateau")


def lr_at(schedule: str, lr: float, epochs: int, warmup_epochs: int, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: linear warm-up, then ``schedule``.

    ``plateau`` returns the base rate; Keras' ReduceLROnPlateau lowers it on plateaus.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if warmup_epochs and epoch < warmup_epochs:
        return lr * (epoch + 1) / (warmup_epochs + 1)
    if schedule == "cosine":
        span = max(1, epochs - warmup_epochs)
        t = (epoch - warmup_epochs) / span
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "step":
        return lr * 0.1 ** (epoch // max(1, epochs // 3))
    return lr
