"""Which members to ensemble: every subset of some runs, scored on PublicTest only.

Usage (from the repo, with the ``train`` extra installed):

    python bench/ensemble_subsets.py experiments/cnn_main experiments/cnn_fp ... [--tta crops] [--data ../shared/data/fer2013/fer2013.csv.gz]

Each run's logits on the PublicTest rows are computed once on every view of ``--tta`` (default flip;
``fer_train.inference.member_logits``), or read from ``--cache DIR`` where an earlier run left them (keyed by
the member files' bytes, the TTA and the images); its softmax (T = 1) under each nested TTA mode up to it (none,
flip, crops: :mod:`fer_runtime.tta`) is the mean over that mode's views. Every non-empty subset is then
scored as the mean of its members' softmaxes. Prints one Markdown table, best accuracy under ``--tta``
first. PrivateTest is never read: member choice is a decision, and decisions are made on PublicTest.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fer_runtime.tta import TTA_MODES, modes_within

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def subset_table(probs: dict[str, dict[str, np.ndarray]], y: np.ndarray,
                 ttas: tuple[str, ...] = ("none", "flip")) -> list[tuple[Any, ...]]:
    """(members, accuracy under each of ``ttas``) for every subset; best under the last TTA first, then the
    ones before it, then fewer members."""
    names = list(probs)
    rows = []
    for r in range(1, len(names) + 1):
        for sub in itertools.combinations(names, r):
            acc = [float((np.mean([probs[n][t] for n in sub], axis=0).argmax(1) == y).mean()) for t in ttas]
            rows.append((sub, *acc))
    return sorted(rows, key=lambda row: (*(-a for a in row[:0:-1]), len(row[0])))


def cached_logits(members: Sequence[Path], images: np.ndarray, tta: str, cache: Path | None,
                  compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, or the array an earlier call with the same member files (by content), TTA and images
    saved in ``cache`` (None: no cache). New results are saved atomically."""
    if cache is None:
        return compute()
    key = hashlib.sha256()
    for m in members:
        key.update(hashlib.sha256(Path(m).read_bytes()).digest())
    key.update(tta.encode())
    key.update(np.ascontiguousarray(images).tobytes())
    path = cache / f"logits_{key.hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path)
    out = compute()
    from fer_runtime.atomic import atomic_open

    cache.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.save(f, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or .keras files (one member each)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the Kaggle fer2013.csv(.gz)")
    ap.add_argument("--tta", default="flip", choices=TTA_MODES[1:], help="the largest TTA mode to score")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep each member's PublicTest logits here, and reuse them on a later run")
    args = ap.parse_args()

    from fer_train.data import load_kaggle_csv
    from fer_train.inference import load_models, member_logits, member_probs
    from fer_train.runs import member_name, member_paths

    public = load_kaggle_csv(args.data)["PublicTest"]
    probs: dict[str, dict[str, np.ndarray]] = {}
    for run in args.runs:
        p = Path(run)
        name = member_name(p)
        if name in probs:
            raise SystemExit(f"error: {run} is the same member as an earlier argument ({name})")
        logits = cached_logits(member_paths(p), public.x, args.tta, args.cache,
                               lambda: member_logits(load_models(p), public.x, tta=args.tta))
        mp = member_probs(logits)  # [N, M, V, 7]
        probs[name] = {t: mp[:, :, :n].mean((1, 2)) for t, n in modes_within(mp.shape[2])}
    ttas = tuple(probs[name])
    print(f"PublicTest ({len(public.y):,} images), mean member softmax at T = 1\n")
    print("| members | " + " | ".join(f"TTA {t}" for t in ttas) + " |\n|---|" + "---:|" * len(ttas))
    for sub, *accs in subset_table(probs, public.y, ttas):
        print(f"| {' + '.join(sub)} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")


if __name__ == "__main__":
    main()
