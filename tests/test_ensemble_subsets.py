"""bench/ensemble_subsets.py: every subset is scored as the mean of its members' softmaxes."""
from __future__ import annotations


import numpy as np

from bench_script import load_bench  # noqa: E402


def _bench():
    return load_bench("ensemble_subsets")


def test_subset_table_scores_every_subset_by_mean_softmax():
    y = np.array([0, 1, 2, 0])
    eye = np.eye(7, dtype=np.float32)
    a = eye[[0, 1, 3, 3]] * 0.6 + 0.4 / 7  # right on images 0, 1
    b = eye[[4, 4, 2, 0]] * 0.9 + 0.1 / 7  # right on images 2, 3, and more confident
    c = eye[[0, 1, 2, 5]] * 0.5 + 0.5 / 7  # right on images 0, 1, 2
    probs = {"a": {"none": a, "flip": a}, "b": {"none": b, "flip": b}, "c": {"none": c, "flip": c[:, ::-1]}}
    rows = _bench().subset_table(probs, y)
    # Worked out by hand from the arrays above (c's flip view reverses its classes, so it is wrong everywhere):
    # together the three err on different images and reach 1.0 without TTA; "a" pulls image 2 to class 3
    # in every pair it joins; sorted by flip accuracy, then no-TTA accuracy, then size.
    assert rows == [
        (("a", "b", "c"), 1.0, 0.5),
        (("a",), 0.5, 0.5),
        (("b",), 0.5, 0.5),
        (("a", "b"), 0.5, 0.5),
        (("a", "c"), 0.5, 0.5),
        (("b", "c"), 0.5, 0.5),
        (("c",), 0.75, 0.0),
    ]
