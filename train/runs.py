"""The run directory and ensemble directory formats, defined once.

A run directory holds ``config.json``, ``history.csv``, ``best.keras``, ``last.keras`` (with the
optimizer, for ``--resume``), ``learning_curves.png`` and ``summary.txt``; a distilled run also
``teacher_probs.npz``; a run with weight averaging ``swa_state.npz``, then ``swa.keras`` and ``swa.json``.
An ensemble directory holds ``ensemble.json`` listing member runs (paths
relative to it) or member ``.keras`` files.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterable

from fer_runtime.atomic import atomic_path, atomic_write
from fer_runtime.errors import FerError
from fer_runtime.errors import first_line

CONFIG = "config.json"
HISTORY = "history.csv"
BEST = "best.keras"
LAST = "last.keras"


SNAPSHOT_PREFIX = "snapshot_"  # snapshot members are SNAPSHOT_PREFIX + cycle number + ".keras"


def snapshot_name(k: int) -> str:
    """File name of the snapshot member saved at the end of cosine cycle ``k`` (1-based)."""
    return f"{SNAPSHOT_PREFIX}{k}.keras"


def is_snapshot(path: str | Path) -> bool:
    """Whether ``path`` names a snapshot member file (``snapshot_name(k)`` for some k)."""
    name = Path(path).name
    number = name.removeprefix(SNAPSHOT_PREFIX).removesuffix(".keras")
    return name == snapshot_name(int(number)) if number.isdigit() else False


TEACHER_PROBS = "teacher_probs.npz"  # a distilled run's cached teacher probabilities (fer_train.targets)
SWA_STATE = "swa_state.npz"  # running mean of the weights of a run with --swa-start (fer_train.swa)
SWA_MODEL = "swa.keras"  # that mean, batch norm statistics recomputed: a member like best.keras
SWA_RESULT = "swa.json"  # how many epochs it averages and its validation accuracy
CURVES = "learning_curves.png"
SUMMARY = "summary.txt"
METRICS = "metrics.json"  # fer-train evaluate's reports per split (fer_train.evaluate)
ENSEMBLE = "ensemble.json"
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "precision",
                  "val_precision")
TEXT_FIELDS = ("precision", "val_precision")  # history columns that are not numbers
VALIDATION_PRECISION = "float32"  # fit validates in float32 under every training precision (fer_train.validation)


class RunError(FerError):
    """A run or ensemble directory is missing, incomplete or inconsistent."""


def save_keras(model: Any, path: Path, include_optimizer: bool) -> None:
    """Save a Keras model as ``.keras`` atomically; without the optimizer state unless asked for."""
    with atomic_path(path) as tmp:
        if include_optimizer:
            model.save(tmp)
            return
        opt = getattr(model, "optimizer", None)  # an uncompiled model has none
        try:
            model.optimizer = None
            model.save(tmp)
        finally:
            model.optimizer = opt


def check_keras_file(path: Path) -> None:
    """RunError naming ``path`` unless it is a file in the ``.keras`` format (a zip archive)."""
    if path.is_dir():
        raise RunError(f"{path}: a directory, not a .keras file")
    if not path.is_file():
        raise RunError(f"{path}: not found")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path}: not a Keras model file (a .keras file is a zip archive); it is damaged or of "
                       "another kind")


def load_weights(model: Any, path: Path) -> None:
    """Load ``path``'s weights (and optimizer state, if ``model`` is compiled and built) into ``model``;
    RunError naming the file if it is not a ``.keras`` file or does not fit ``model``."""
    check_keras_file(path)
    try:
        model.load_weights(path)
    except MemoryError:
        raise
    except Exception as e:  # keras raises many types for a damaged archive or another architecture
        raise RunError(f"{path}: cannot load its weights ({first_line(e, named=True)[:200]})") from None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; RunError naming the file if it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: invalid JSON ({e})") from None


def read_metrics(folder: Path) -> dict[str, Any]:
    """The folder's metrics.json by split key ({} if it has none); RunError naming the file if it is damaged."""
    path = Path(folder) / METRICS
    if not path.exists():
        return {}
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: expected a JSON object of metrics by split")
    return metrics


def read_history(run: Path) -> list[dict[str, Any]]:
    """Rows of history.csv: numbers as floats, ``precision`` and ``val_precision`` as text (absent or empty in
    older runs)."""
    p = run / HISTORY
    if not p.exists():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{p}: damaged (not UTF-8 text)") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if missing := [k for k in HISTORY_FIELDS if k not in TEXT_FIELDS and k not in (reader.fieldnames or [])]:
            raise RunError(f"{p}:1: damaged header (no {', '.join(missing)} column)")
        rows = []
        for row in reader:
            try:
                rows.append({k: v if k in TEXT_FIELDS else float(v) for k, v in row.items()})
            except (TypeError, ValueError):  # a short row (None cells), an empty or non-numeric cell
                raise RunError(f"{p}:{reader.line_num}: damaged row (a value is missing or not a number)") from None
        return rows


def history_row(epoch: int, logs: dict[str, Any], lr: float, seconds: float, precision: str) -> dict[str, Any]:
    """One history.csv row (:data:`HISTORY_FIELDS`): the 1-based ``epoch``, its losses and accuracies from Keras-style
    ``logs`` (NaN for any missing), the learning rate, the seconds it took and the training precision."""
    nan = float("nan")
    return {"epoch": epoch, **{k: float(logs.get(k, nan)) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "lr": float(lr), "seconds": float(seconds), "precision": precision, "val_precision": VALIDATION_PRECISION}


def write_history(run: Path, rows: Iterable[dict[str, float]]) -> None:
    """Write the run's history.csv (:data:`HISTORY_FIELDS`), atomically."""
    lines = [",".join(HISTORY_FIELDS)]
    for r in rows:
        lines.append(",".join(_cell(k, r.get(k, "")) for k in HISTORY_FIELDS))
    atomic_write(run / HISTORY, "\n".join(lines) + "\n")


def _cell(key: str, value: Any) -> str:
    if key == "epoch":
        return str(int(value))
    if key in TEXT_FIELDS:
        return str(value)
    return f"{value:.6g}"


def validated_in_float32(row: dict[str, Any]) -> bool:
    """Whether a history row's ``val_`` figures are float32 ones, as the exported graph computes. Rows say so in
    ``val_precision``; older rows (empty or no such column) were validated in their training ``precision``."""
    return (row.get("val_precision") or row.get("precision") or "float32") == "float32"


def best_epoch(history: list[dict[str, float]]) -> tuple[int, float]:
    """(1-based epoch, val_accuracy) of the best epoch; the first one wins ties."""
    if not history:
        return 0, float("nan")
    best = max(history, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    return int(best["epoch"]), best["val_accuracy"]


def stopped_early(history: list[dict[str, float]], patience: int) -> bool:
    """Whether the run's last ``patience`` epochs brought no validation gain: the early-stopping rule."""
    return bool(history) and len(history) - best_epoch(history)[0] >= patience


def member_name(path: str | Path) -> str:
    """A member's name: a run's name for the run or its ``best.keras``/``last.keras``; ``run/snapshot_K`` or
    ``run/swa`` for a run's snapshot or weight average (one run's members differ); the file's stem for any
    other ``.keras`` file."""
    p = Path(path)
    if p.suffix != ".keras":
        return p.name
    if p.name in (BEST, LAST) and p.parent.name:
        return p.parent.name
    return f"{p.parent.name}/{p.stem}" if (is_snapshot(p) or p.name == SWA_MODEL) and p.parent.name else p.stem


def distinct_member_paths(sources: Iterable[str | Path]) -> list[Path]:
    """The ``.keras`` files of the given runs, ensembles or files (:func:`member_paths`), in order; RunError if a
    model appears twice (an ensemble would count it double)."""
    seen: dict[Path, str | Path] = {}
    out: list[Path] = []
    for s in sources:
        for f in member_paths(s):
            if (first := seen.setdefault(f.resolve(), s)) is not s:
                raise RunError(f"{s} and {first} are the same member ({f}); list each model once")
            out.append(f)
    return out


def read_ensemble(folder: str | Path) -> tuple[list[Path], str]:
    """An ensemble folder's (member paths, data path): each as written in its ``ensemble.json``, resolved
    against the folder; RunError naming the file if it is damaged or lists no members."""
    path = Path(folder) / ENSEMBLE
    spec = read_json(path)
    entries = spec.get("members") if isinstance(spec, dict) else None
    if (not isinstance(entries, list) or not entries
            or not all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries)):
        raise RunError(f'{path}: expected {{"members": [{{"path": ...}}, ...], "data": ...}} with at least one member')
    data = spec.get("data") or ""
    if not isinstance(data, str):
        raise RunError(f"{path}: data must be a path, got {data!r}")
    return [Path(folder) / e["path"] for e in entries], (str(Path(folder) / data) if data else "")


def member_paths(path: str | Path, _within: frozenset[Path] = frozenset()) -> list[Path]:
    """The ``best.keras`` files of a run, an ensemble directory, or a ``.keras`` file itself."""
    p = Path(path)
    if p.is_file() and p.suffix == ".keras":
        return [p]
    if (p / ENSEMBLE).exists():
        if (key := p.resolve()) in _within:
            raise RunError(f"{p / ENSEMBLE}: the ensemble lists itself (a member path leads back to {p})")
        members, _ = read_ensemble(p)
        return [f for m in members for f in member_paths(m, _within | {key})]
    if (p / BEST).exists():
        return [p / BEST]
    if not p.exists():
        raise RunError(f"{p}: no such run, ensemble or .keras file")
    raise RunError(f"{p}: not a run (no {BEST}) nor an ensemble (no {ENSEMBLE})")
