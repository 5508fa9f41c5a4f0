"""bench/ensemble_subsets.py: every subset is scored as the mean of its members' softmaxes."""
from __future__ import annotations


import numpy as np
import pytest

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
    bench = _bench()
    subsets = bench.all_subsets(list(probs))
    rows = bench.subset_table(subsets, {t: bench.correct_matrix(probs, y, t, subsets) for t in ("none", "flip")})
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


def test_mcnemar_p_is_the_exact_two_sided_binomial_test():
    p = _bench().mcnemar_p
    assert p(0, 0) == 1.0
    assert p(10, 0) == p(0, 10) == 2 / 1024  # all ten discordant images one way: 2 x 0.5^10
    assert p(1, 4) == p(4, 1) == 2 * (1 + 5) / 32  # 2 x P(X <= 1), X ~ Bin(5, 1/2)
    assert p(3, 3) == 1.0 and p(38, 39) == 1.0  # capped at 1


def test_best_subset_keeps_to_the_cap_and_breaks_ties_by_size():
    best = _bench().best_subset
    counts, sizes = np.array([5, 7, 7, 9]), np.array([1, 2, 1, 3])
    assert best(counts, sizes, 3) == 3
    assert best(counts, sizes, 2) == 2  # 7 correct with 1 member beats 7 with 2
    assert best(counts, sizes, 1) == 2


def test_random_halves_are_halves_and_seeded():
    halves = _bench().random_halves
    h = halves(9, 50, seed=3)
    assert h.shape == (50, 9) and (h.sum(1) == 4).all()
    assert len({r.tobytes() for r in h}) > 10  # not the same half every time
    assert np.array_equal(h, halves(9, 50, seed=3)) and not np.array_equal(h, halves(9, 50, seed=4))


def test_halving_gains_choose_on_one_half_and_score_on_the_other():
    gains = _bench().halving_gains
    a = np.array([[True] * 4 + [False] * 4])  # one halving: images 0-3 are half A, 4-7 half B
    correct = np.array([
        [1, 0, 1, 0, 1, 1, 1, 1],  # 0, the baseline: 2 of A, all of B
        [1, 1, 1, 1, 0, 0, 0, 0],  # 1: all of A, none of B (it only fits A)
        [1, 1, 1, 0, 1, 1, 1, 0],  # 2: 3 of A, 3 of B; but two members
    ], bool)
    sizes = np.array([1, 1, 2])
    g = gains(correct, sizes, 0, [1, 2], a)
    assert g[1].tolist() == [-1.0]  # chosen on A (subset 1), it gets none of B against the baseline's 4
    assert g[2].tolist() == [-1.0]  # subset 1 still wins on A when two members are allowed
    g = gains(correct, sizes, 0, [2], ~a)  # the other way round: chosen on 4-7, scored on 0-3
    assert g[2].tolist() == [0.0]  # the baseline (all of 4-7, and 1 member) is chosen: no gain


def test_subset_index_names_unknown_members():
    b = _bench()
    subsets = b.all_subsets(["a", "b", "c"])
    assert len(subsets) == 7 and subsets[b.subset_index(subsets, ["c", "a"])] == ("a", "c")
    with pytest.raises(ValueError, match="not among the members: d .*the members are a, b, c"):
        b.subset_index(subsets, ["a", "d"])
    with pytest.raises(ValueError, match="each member once"):
        b.subset_index(subsets, ["a", "a"])


def test_checks_print_the_baseline_comparison_and_the_halving_check(capsys):
    y = np.array([0, 1, 2, 3, 4])
    eye = np.eye(7, dtype=np.float32)
    a = eye[[1, 2, 3, 4, 5]] * 0.6 + 0.4 / 7  # wrong on every image
    b = eye[[0, 1, 2, 3, 4]] * 0.9 + 0.1 / 7  # right on every image, and surer, so a + b is right too
    probs = {"a": {"flip": a}, "b": {"flip": b}}
    bench = _bench()
    subsets = bench.all_subsets(list(probs))
    bench.print_checks(subsets, bench.correct_matrix(probs, y, "flip", subsets), "flip", ["a"], halvings=20, seed=0)
    out = capsys.readouterr().out
    assert "| baseline | a | 0.0000 | 0 | 0 | 1.00 |" in out
    assert "| best, any number | b | 1.0000 | 5 | 0 | 0.06 |" in out  # b ties a + b with fewer members; 2 x 0.5^5
    assert "| all members | a + b | 1.0000 | 5 | 0 | 0.06 |" in out
    assert "20 random halvings" in out
    # b is chosen on every half and is right on all of the other half, where the baseline is always wrong
    assert "| any number | +100.00 | 0.00 | 100% |" in out
