"""Ensembles: train N members from a run's config, or gather existing runs."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from fer_train import runs
from fer_train.config import read_run_config, refuse_new_epochs
from fer_train.fit import fit


def write_ensemble(out: Path, members: list[Path], data: str = "") -> Path:
    """Write ``out/ensemble.json`` listing ``members`` (run dirs or .keras files) and ``data``, relative to ``out``.

    ``out`` may be one of ``members`` when it is an ensemble: its current members are listed in its place (so
    ``ensemble A B --out A`` adds B to A). A run folder cannot hold an ensemble (it would no longer be that run).
    """
    if (out / runs.BEST).exists() or (out / runs.LAST).exists():
        raise runs.RunError(f"{out} is a run folder; write the ensemble into a folder of its own")
    if (out / runs.ENSEMBLE).exists() and any(m.resolve() == out.resolve() for m in members):
        listed = runs.read_ensemble(out)[0]
        members = [x for m in members for x in (listed if m.resolve() == out.resolve() else [m])]
    runs.distinct_member_paths(members)  # RunError if one is not a run, or a model is listed twice
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for m in members:
        rel = Path(_relpath(m.resolve(), out.resolve()))
        entry: dict[str, Any] = {"path": str(rel)}
        hist = runs.read_history(m) if m.is_dir() else []
        if hist:
            entry["best_epoch"], entry["val_accuracy"] = runs.best_epoch(hist)
        entries.append(entry)
    runs.write_json(out / runs.ENSEMBLE, {"members": entries, "data": _relpath(Path(data).resolve(), out.resolve()) if data else ""})
    return out / runs.ENSEMBLE


def _relpath(p: Path, start: Path) -> str:
    import os

    return os.path.relpath(p, start)


def train_ensemble(out: Path, templates: list[Path], seeds: list[int], epochs: int | None = None,
                   run_fit: Callable[..., dict] = fit) -> list[dict]:
    """Train one member per (template run config, seed) into ``out/<template>_s<seed>``; resumable."""
    names: dict[str, Path] = {}
    for t in templates:
        for seed in seeds:
            name = f"{t.name}_s{seed}"
            if (first := names.setdefault(name, t)) is not t or list(seeds).count(seed) > 1:
                raise runs.RunError(f"{first} and {t} with seed {seed} would both train {out / name}: give each "
                                    "template a folder name of its own and each seed once")
            if (out / name / runs.LAST).exists():
                refuse_new_epochs(out / name, epochs)  # before any member trains
    results, members, data = [], [], ""
    for t in templates:
        _, mcfg, template = read_run_config(t)
        for seed in seeds:
            # a new initialisation and augmentation order; the template's validation rows, so that the members
            # can be evaluated together on them
            tcfg = replace(template, random_seed=seed, split_seed=template.validation_seed)
            if epochs:
                tcfg.epochs = epochs
            data = tcfg.data
            run = out / f"{t.name}_s{seed}"
            resume = (run / runs.LAST).exists()
            results.append(run_fit(run, None if resume else mcfg, None if resume else tcfg, resume=resume))
            members.append(run)
    write_ensemble(out, members, data)
    return results
