"""Which members to ensemble: every subset of some runs, scored on PublicTest only.

Usage (from the repo, with the ``train`` extra installed):

    python bench/ensemble_subsets.py experiments/cnn_main experiments/cnn_fp ... [--tta crops] [--data ../shared/data/fer2013/fer2013.csv.gz]

Each run's logits on the PublicTest rows are computed once on every view of ``--tta`` (default flip;
``fer_train.inference.member_logits``), or read from ``--cache DIR`` where an earlier run left them (keyed by
the member files' bytes, the TTA and the images); its softmax (T = 1) under each nested TTA mode up to it (none,
flip, crops: :mod:`fer_runtime.tta`) is the mean over that mode's views. Every non-empty subset is then
scored as the mean of its members' softmaxes. Prints one Markdown table, best accuracy under ``--tta``
first. PrivateTest is never read: member choice is a decision, and decisions are made on PublicTest.

``--against A B ...`` names a baseline subset (the shipped members) and adds two checks, under ``--tta``:

- each best subset (overall, and with at most 3, 4 or 6 members) and the set of all members against the
  baseline: images gained and lost, and McNemar's exact two-sided p on those discordant images;
- the halving check: ``--halvings`` random halvings of PublicTest; in each, the best subset (within each
  size cap) is chosen on one half and scored on the other against the baseline on that half. A mean gain near
  zero says the choice fits PublicTest's noise, however good the best subset looks on all of it.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fer_runtime.tta import TTA_MODES, modes_within

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def all_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first, each in the order of ``names``."""
    return [sub for r in range(1, len(names) + 1) for sub in itertools.combinations(names, r)]


def correct_matrix(probs: dict[str, dict[str, np.ndarray]], y: np.ndarray, tta: str,
                   subsets: Sequence[tuple[str, ...]]) -> np.ndarray:
    """[S, N] bool: whether the mean softmax of each subset's members under ``tta`` is right on each image."""
    return np.stack([np.mean([probs[n][tta] for n in sub], axis=0).argmax(1) == y for sub in subsets])


def subset_table(subsets: Sequence[tuple[str, ...]], correct: dict[str, np.ndarray]) -> list[tuple[Any, ...]]:
    """(members, accuracy under each TTA of ``correct``) for every subset, from its ``correct_matrix`` per TTA
    (in order); best under the last TTA first, then the ones before it, then fewer members."""
    accs = [c.mean(1) for c in correct.values()]
    rows = [(sub, *(float(a[i]) for a in accs)) for i, sub in enumerate(subsets)]
    return sorted(rows, key=lambda row: (*(-a for a in row[:0:-1]), len(row[0])))


def mcnemar_p(gained: int, lost: int) -> float:
    """McNemar's exact two-sided p: the chance of a split of the ``gained + lost`` discordant images at least this
    uneven if each were equally likely to go either way (binomial, 1/2). Integer arithmetic, so exact."""
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def versus(correct: np.ndarray, i: int, base: int) -> tuple[float, int, int, float]:
    """(accuracy of subset ``i``, images it gains and loses against subset ``base``, McNemar's p)."""
    gained = int(np.sum(correct[i] & ~correct[base]))
    lost = int(np.sum(~correct[i] & correct[base]))
    return float(correct[i].mean()), gained, lost, mcnemar_p(gained, lost)


def best_subset(counts: np.ndarray, sizes: np.ndarray, cap: int) -> int:
    """Index of the subset with the most correct images among those of at most ``cap`` members; ties go to
    fewer members, then to the first."""
    score = np.where(sizes <= cap, counts * (sizes.max() + 1) + (sizes.max() - sizes), -1)
    return int(np.argmax(score))


def random_halves(n: int, count: int, seed: int = 0) -> np.ndarray:
    """[count, n] bool: ``count`` random halves of ``n`` images (``n // 2`` True in each row)."""
    rng = np.random.default_rng(seed)
    halves = np.zeros((count, n), bool)
    for h in halves:
        h[rng.permutation(n)[: n // 2]] = True
    return halves


def halving_gains(correct: np.ndarray, sizes: np.ndarray, base: int, caps: Sequence[int],
                  halves: np.ndarray) -> dict[int, np.ndarray]:
    """For each size cap: per halving, the accuracy gain on the other half (B) of the best subset chosen on
    the half ``halves[h]`` (A), against subset ``base`` on B."""
    c = correct.astype(np.float32)
    on_a = c @ halves.T.astype(np.float32)  # [S, H] correct images in A
    on_b = c.sum(1, keepdims=True) - on_a
    n_b = (~halves).sum(1)
    gains = {}
    for cap in caps:
        best = [best_subset(on_a[:, h], sizes, cap) for h in range(len(halves))]
        gains[cap] = np.array([(on_b[i, h] - on_b[base, h]) / n_b[h] for h, i in enumerate(best)])
    return gains


def subset_index(subsets: Sequence[tuple[str, ...]], members: Sequence[str]) -> int:
    """Index of the subset made of ``members`` (any order); ValueError naming the unknown ones."""
    known = {n for sub in subsets for n in sub}
    unknown = [m for m in members if m not in known]
    if unknown or len(set(members)) != len(members) or not members:
        raise ValueError(f"--against {' '.join(members)}: " + (f"not among the members: {', '.join(unknown)} "
                         f"(the members are {', '.join(sorted(known))})" if unknown else "name each member once"))
    want = set(members)
    return next(i for i, sub in enumerate(subsets) if set(sub) == want)


def print_checks(subsets: Sequence[tuple[str, ...]], correct: np.ndarray, tta: str, against: Sequence[str],
                 halvings: int, seed: int) -> None:
    """The baseline comparison and the halving check of the module docstring, as Markdown, from the
    ``correct_matrix`` of ``subsets`` (``all_subsets`` of the members) under ``tta``."""
    base = subset_index(subsets, against)
    sizes = np.array([len(s) for s in subsets])
    n_members = int(sizes.max())
    caps = sorted({c for c in (3, 4, 6) if c < n_members} | {n_members})
    counts = correct.sum(1)
    label = {cap: ("any number" if cap == n_members else f"at most {cap}") for cap in caps}
    print(f"\nAgainst {' + '.join(subsets[base])} (TTA {tta}); McNemar's exact test on the images that differ\n")
    print("| subset | members | accuracy | gained | lost | p |\n|---|---|---:|---:|---:|---:|")
    rows = [("baseline", base)] + [(f"best, {label[c]}", best_subset(counts, sizes, c)) for c in caps]
    rows.append(("all members", len(subsets) - 1))
    for what, i in rows:
        acc, gained, lost, p = versus(correct, i, base)
        print(f"| {what} | {' + '.join(subsets[i])} | {acc:.4f} | {gained} | {lost} | {p:.2f} |")
    gains = halving_gains(correct, sizes, base, caps, random_halves(correct.shape[1], halvings, seed))
    print(f"\nHalving check: {halvings} random halvings (seed {seed}); the best subset chosen on one half, "
          f"scored on the other against the baseline\n")
    print("| members allowed | mean gain (points) | sd | halvings with a gain |\n|---|---:|---:|---:|")
    for cap in caps:
        g = gains[cap] * 100
        print(f"| {label[cap]} | {g.mean():+.2f} | {g.std():.2f} | {np.mean(g > 0):.0%} |")


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
    ap.add_argument("--against", nargs="+", default=None, metavar="MEMBER",
                    help="the baseline subset, by the member names the table prints (e.g. the shipped members)")
    ap.add_argument("--halvings", type=int, default=200, help="random halvings for the halving check")
    ap.add_argument("--seed", type=int, default=0, help="seed of the halvings")
    args = ap.parse_args()

    from fer_train.data import load_kaggle_csv
    from fer_train.inference import load_models, member_logits, member_probs
    from fer_train.runs import member_name, member_paths

    names = [member_name(Path(run)) for run in args.runs]
    for i, (run, name) in enumerate(zip(args.runs, names)):
        if name in names[:i]:
            raise SystemExit(f"error: {run} is the same member as an earlier argument ({name})")
    if args.against:  # checked before any logits are computed
        try:
            subset_index(all_subsets(names), args.against)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    if args.halvings < 1:
        raise SystemExit("error: --halvings must be at least 1")

    public = load_kaggle_csv(args.data)["PublicTest"]
    probs: dict[str, dict[str, np.ndarray]] = {}
    for run, name in zip(args.runs, names):
        p = Path(run)
        logits = cached_logits(member_paths(p), public.x, args.tta, args.cache,
                               lambda: member_logits(load_models(p), public.x, tta=args.tta))
        mp = member_probs(logits)  # [N, M, V, 7]
        probs[name] = {t: mp[:, :, :n].mean((1, 2)) for t, n in modes_within(mp.shape[2])}
    ttas = tuple(probs[names[0]])
    subsets = all_subsets(names)
    correct = {t: correct_matrix(probs, public.y, t, subsets) for t in ttas}  # shared by the table and checks
    print(f"PublicTest ({len(public.y):,} images), mean member softmax at T = 1\n")
    print("| members | " + " | ".join(f"TTA {t}" for t in ttas) + " |\n|---|" + "---:|" * len(ttas))
    for sub, *accs in subset_table(subsets, correct):
        print(f"| {' + '.join(sub)} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    if args.against:
        print_checks(subsets, correct[ttas[-1]], ttas[-1], args.against, args.halvings, args.seed)

if __name__ == "__main__":
    main()
