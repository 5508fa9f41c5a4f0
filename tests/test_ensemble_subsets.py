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


def test_cached_logits_are_reused_only_for_the_same_members_tta_and_images(tmp_path):
    cached = _bench().cached_logits
    member, other = tmp_path / "a.keras", tmp_path / "b.keras"
    member.write_bytes(b"weights a")
    other.write_bytes(b"weights b")
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2, 1)
    calls = []

    def compute():
        calls.append(1)
        return np.full((3, 1, 2, 7), float(len(calls)))

    cache = tmp_path / "cache"
    first = cached([member], x, "flip", cache, compute)
    assert np.array_equal(cached([member], x, "flip", cache, compute), first) and len(calls) == 1
    for args in (([other], x, "flip"), ([member], x, "crops"), ([member], x + 1, "flip")):
        assert cached(*args, cache, compute)[0, 0, 0, 0] == len(calls)  # computed again
    assert len(calls) == 4
    member.write_bytes(b"weights a, retrained")
    cached([member], x, "flip", cache, compute)
    assert len(calls) == 5
    cached([member], x, "flip", None, compute)  # no cache: always computed
    assert len(calls) == 6 and len(list(cache.iterdir())) == 5
