"""Ensemble members: resolving run/ensemble paths, loading the Keras models, and their manifest facts.

A member's PublicTest accuracy comes from, in order: the run's ``metrics.json`` (written by
``fer-train evaluate``), the run's ``history.csv`` best ``val_accuracy`` when its ``config.json``
says validation is PublicTest, or an evaluation on the PublicTest rows of ``--verify-data``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_export import twin
from fer_export.errors import ExportError
from fer_runtime.manifest import MemberEntry
from fer_train import inference, runs



@dataclass
class Member:
    """One loaded ensemble member and what the manifest says about it."""

    name: str
    path: Path
    model: Any
    params: int
    public_test_accuracy: float | None = None
    accuracy_from: str = "unknown"  # metrics.json | history.csv | computed | unknown

    def manifest_entry(self) -> MemberEntry:
        """The member's record in the manifest."""
        acc = None if self.public_test_accuracy is None else round(float(self.public_test_accuracy), 6)
        return MemberEntry(name=self.name, params=self.params, public_test_accuracy=acc,
                           accuracy_from=self.accuracy_from)


def member_paths(sources: Sequence[str | Path]) -> list[Path]:
    """The ``.keras`` files of the given runs, ensembles or files, in order; ExportError if none or repeated."""
    if not sources:
        raise ExportError("no run, ensemble or .keras file given")
    try:
        return runs.distinct_member_paths(sources)
    except runs.RunError as e:
        raise ExportError(str(e)) from None


def load_member(path: str | Path) -> Any:
    """Load a ``.keras`` file by :func:`fer_train.inference.load_model` (no optimizer, float32); ExportError if unreadable."""
    try:
        return inference.load_model(path)
    except inference.KerasInferenceError as e:
        raise ExportError(str(e)) from None


def recorded_accuracy(path: Path) -> tuple[float | None, str]:
    """(PublicTest accuracy, where it came from) as recorded in the member's run directory, if any.

    history.csv counts only for an epoch validated in float32, the precision of the export.
    """
    if path.name != runs.BEST:
        return None, "unknown"
    run = path.parent
    try:
        rep = runs.read_metrics(run).get("PublicTest", {})
    except (OSError, runs.RunError):  # a damaged metrics.json: the next source
        rep = {}
    # only a figure of this very file (fer-train evaluate RUN/last.keras or swa.keras writes here too)
    if isinstance(rep, dict) and isinstance(rep.get("accuracy"), (int, float)) and \
            rep.get("members", [runs.BEST]) == [runs.BEST]:
        return float(rep["accuracy"]), "metrics.json"
    cp = run / runs.CONFIG
    if cp.exists():
        try:
            conf = runs.read_json(cp)
            data = conf.get("data") if isinstance(conf, dict) else None
            validation = data.get("validation") if isinstance(data, dict) else None
            history = runs.read_history(run) if validation == "PublicTest" else []
        except (OSError, runs.RunError):  # a damaged config.json or history.csv: no recorded figure
            validation, history = None, []
        if validation == "PublicTest" and history:
            epoch, acc = runs.best_epoch(history)
            # Older bfloat16 epochs were validated in bfloat16; the exported graph is float32 (gaps up to 0.3 points).
            row = next((r for r in history if int(r["epoch"]) == epoch), {})
            if epoch > 0 and np.isfinite(acc) and runs.validated_in_float32(row):
                return float(acc), "history.csv"
    return None, "unknown"


def public_test_accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of one Keras model on raw 0..255 images ``x`` with labels ``y``."""
    return float((inference.predict_probs([model], x, batch_size=batch_size).argmax(1) == y).mean())


def load_members(sources: Sequence[str | Path], data: Any | None = None) -> list[Member]:
    """Resolve and load every member, check that the twins can differentiate it (ExportError naming the member
    if not); fill params and PublicTest accuracy.

    ``data`` (a :class:`fer_train.data.DataSource`) is used to compute the accuracy of members
    whose run directory has none recorded, if it has a PublicTest split.
    """
    members: list[Member] = []
    names: set[str] = set()
    for p in member_paths(sources):
        name = base = runs.member_name(p)
        k = 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        model = load_member(p)
        try:  # before anything runs the model: a wrong input shape or layer is one line, not a Keras traceback
            twin.check_model(model)
        except ExportError as e:
            raise ExportError(f"member {name!r} ({p}): {e}") from None
        acc, src = recorded_accuracy(p)
        if acc is None and data is not None and "PublicTest" in data.splits and len(data["PublicTest"]):
            split = data["PublicTest"]
            acc, src = public_test_accuracy(model, split.x, split.y), "computed"
        members.append(Member(name, p, model, int(model.count_params()), acc, src))
    return members
