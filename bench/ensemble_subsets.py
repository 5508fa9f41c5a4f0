"""Which members to ensemble: every subset of some runs, scored on PublicTest only.

Usage (from the repo, with the ``train`` extra installed):

    python bench/ensemble_subsets.py experiments/cnn_main experiments/cnn_fp ... [--data ../shared/data/fer2013/fer2013.csv.gz]

Each run's softmax (T = 1) on the PublicTest rows is computed once without and once with flip TTA
(``fer_train.inference.predict_probs``); every non-empty subset is then scored as the mean of its
members' softmaxes. Prints one Markdown table, best flip-TTA accuracy first. PrivateTest is never
read: member choice is a decision, and decisions are made on PublicTest.
"""
from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
TTAS = ("none", "flip")


def subset_table(probs: dict[str, dict[str, np.ndarray]], y: np.ndarray) -> list[tuple[tuple[str, ...], float, float]]:
    """(members, accuracy without TTA, accuracy with flip TTA) for every subset, best flip accuracy first."""
    names = list(probs)
    rows = []
    for r in range(1, len(names) + 1):
        for sub in itertools.combinations(names, r):
            acc = [float((np.mean([probs[n][t] for n in sub], axis=0).argmax(1) == y).mean()) for t in TTAS]
            rows.append((sub, acc[0], acc[1]))
    return sorted(rows, key=lambda row: (-row[2], -row[1], len(row[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or .keras files (one member each)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the Kaggle fer2013.csv(.gz)")
    args = ap.parse_args()

    from fer_train.data import load_kaggle_csv
    from fer_train.inference import load_models, predict_probs
    from fer_train.runs import member_name

    public = load_kaggle_csv(args.data)["PublicTest"]
    probs: dict[str, dict[str, np.ndarray]] = {}
    for run in args.runs:
        p = Path(run)
        name = member_name(p)
        if name in probs:
            raise SystemExit(f"error: {run} is the same member as an earlier argument ({name})")
        models = load_models(p)
        probs[name] = {t: predict_probs(models, public.x, tta=t) for t in TTAS}
    print(f"PublicTest ({len(public.y):,} images), mean member softmax at T = 1\n")
    print("| members | no TTA | flip TTA |\n|---|---:|---:|")
    for sub, none, flip in subset_table(probs, public.y):
        print(f"| {' + '.join(sub)} | {none:.4f} | {flip:.4f} |")


if __name__ == "__main__":
    main()
