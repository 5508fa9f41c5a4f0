"""Learning-rate schedules: the rate for each epoch, from the run's configuration."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step", "plateau")


def check_cycles(schedule: str, epochs: int, warmup_epochs: int, cycles: int) -> None:
    """Raise ValueError unless ``cycles`` cosine cycles divide the epochs after warm-up evenly."""
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    if cycles > 1 and schedule != "cosine":
        raise ValueError(f"--cycles {cycles} needs --schedule cosine (one cosine decay per cycle)")
    if cycles > 1 and epochs - warmup_epochs < cycles:
        raise ValueError(f"{epochs} epochs minus {warmup_epochs} warm-up leave fewer than {cycles} epochs for {cycles} cycles")
    if cycles > 1 and (epochs - warmup_epochs) % cycles:
        raise ValueError(f"{epochs} epochs minus {warmup_epochs} warm-up do not split into {cycles} equal cycles")


def cycle_length(epochs: int, warmup_epochs: int, cycles: int) -> int:
    """Epochs per cosine cycle after warm-up (at least 1)."""
    return max(1, (epochs - warmup_epochs) // max(1, cycles))


def cycle_ends(epochs: int, warmup_epochs: int, cycles: int) -> list[int]:
    """The 1-based epochs that end each cosine cycle (where a snapshot member is saved); [] for one cycle."""
    if cycles <= 1:
        return []
    span = cycle_length(epochs, warmup_epochs, cycles)
    return [warmup_epochs + span * (k + 1) for k in range(cycles)]


def lr_at(schedule: str, lr: float, epochs: int, warmup_epochs: int, epoch: int, cycles: int = 1) -> float:
    """Learning rate for 0-based ``epoch``: linear warm-up, then ``schedule``.

    ``cosine`` with ``cycles`` > 1 restarts the decay at the start of each cycle (snapshot ensembles,
    Huang et al. 2017). ``plateau`` returns the base rate; Keras' ReduceLROnPlateau lowers it on plateaus.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if warmup_epochs and epoch < warmup_epochs:
        return lr * (epoch + 1) / (warmup_epochs + 1)
    if schedule == "cosine":
        span = cycle_length(epochs, warmup_epochs, cycles)
        t = ((epoch - warmup_epochs) % span) / span
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "step":
        return lr * 0.1 ** (epoch // max(1, epochs // 3))
    return lr
