"""Learning curves (fer_train.plots): a weight-averaged run's figure shows the average's accuracy."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fer_train import runs  # noqa: E402
from fer_train.plots import plot_run_curves  # noqa: E402

GREEN = np.array([44, 160, 44])  # matplotlib's tab:green, the average's line (the same in BGR)


def _green_pixels(png: Path) -> int:
    img = cv2.imread(str(png)).astype(int)
    return int((np.abs(img - GREEN).max(axis=2) <= 12).sum())


def test_learning_curves_draw_the_weight_average_only_when_the_run_has_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    runs.write_history(run, [{"epoch": e, "loss": 1.5 - 0.1 * e, "accuracy": 0.4 + 0.03 * e, "val_loss": 1.4 - 0.05 * e,
                              "val_accuracy": 0.45 + 0.02 * e, "lr": 0.01, "seconds": 1.0, "precision": "float32"}
                             for e in range(1, 6)])
    plain = plot_run_curves(run)
    assert plain == run / runs.CURVES and _green_pixels(plain) == 0
    runs.write_json(run / runs.SWA_RESULT, {"epochs_averaged": 5, "val_accuracy": 0.6, "last_epoch": 5})
    assert _green_pixels(plot_run_curves(run)) > 50  # the dotted level line and its legend entry


def test_the_epoch_axis_has_whole_numbers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_train import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=110: figures.append(fig) or path)
    history = [{"epoch": e, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5} for e in range(1, 22)]
    plots.plot_learning_curves(history, (19, 0.5), "run", tmp_path / "c.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 21]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks
