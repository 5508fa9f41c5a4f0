"""bench/ensemble_subsets.py: every subset is scored as the mean of its members' softmaxes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "ensemble_subsets.py"
    spec = importlib.util.spec_from_file_location("bench_ensemble_subsets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subset_table_scores_every_subset_by_mean_softmax():
    y = np.array([0, 1, 2, 0])
    eye = np.eye(7, dtype=np.float32)
    a = eye[[0, 1, 3, 3]] * 0.6 + 0.4 / 7  # right on images 0, 1
    b = eye[[4, 4, 2, 0]] * 0.9 + 0.1 / 7  # right on images 2, 3, and more confident
    c = eye[[0, 1, 2, 5]] * 0.5 + 0.5 / 7  # right on images 0, 1, 2
    probs = {"a": {"none": a, "flip": a}, "b": {"none": b, "flip": b}, "c": {"none": c, "flip": c[:, ::-1]}}
    rows = _bench().subset_table(probs, y)
    assert len(rows) == 7 and len({r[0] for r in rows}) == 7
    got = {r[0]: (r[1], r[2]) for r in rows}
    for sub, (none, flip) in got.items():
        for tta, acc in (("none", none), ("flip", flip)):
            mean = sum(probs[n][tta] for n in sub) / len(sub)
            assert acc == float((mean.argmax(1) == y).mean()), (sub, tta)
    assert got[("a",)] == (0.5, 0.5) and got[("c",)][0] == 0.75
    assert got[("a", "c")] == (0.5, 0.5)  # "a" pulls image 2 to class 3
    assert got[("b",)] == (0.5, 0.5) and got[("a", "b", "c")][0] == 1.0  # the three err on different images
    flips = [r[2] for r in rows]
    assert flips == sorted(flips, reverse=True)
