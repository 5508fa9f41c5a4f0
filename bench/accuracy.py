"""Accuracy benchmark of the exported variants, through fer_runtime: the tables of the model card.

Usage (from the repo, with the ``train`` extra for ``fer_train``'s CSV reader and plots; TensorFlow is not imported):

    python bench/accuracy.py [--model-dir models] [--data ../shared/data/fer2013/fer2013.csv.gz] [--card models/README.md]

For every variant in the manifest, on the PublicTest and PrivateTest rows of the Kaggle CSV, it
prints Markdown tables: accuracy, balanced accuracy and ECE of each member and of the ensemble,
under every TTA mode the graph holds: none, flip, and crops for a crop-TTA variant (each recomputed from the
forward graph's ``member_probs`` output, so only the shipped files are used); per-class recall; calibration; size and sha256 of
every file. It writes a row-normalised PrivateTest confusion matrix ``confusion_<variant>.png``
into the model directory (or ``--png-dir``). ``--card FILE`` replaces the block between
``<!-- bench:accuracy:begin -->`` and ``<!-- bench:accuracy:end -->`` in FILE with exactly the
printed tables, so the card cannot disagree with the bench.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime import FerRuntimeError, MissingOutputError, Predictor
from fer_runtime.atomic import atomic_write
from fer_runtime.labels import LABELS
from fer_runtime.manifest import Manifest, read_manifest
from fer_runtime.predictor import default_model_dir
from fer_runtime.tta import modes_within, view_count
from fer_train.data import DataFormatError, Split, load_kaggle_csv
from fer_train.metrics import classification_report
from fer_train.plots import plot_confusion

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
BEGIN, END = "<!-- bench:accuracy:begin -->", "<!-- bench:accuracy:end -->"
SPLITS = ("PublicTest", "PrivateTest")
CONFUSION_SPLIT = "PrivateTest"
CHECK_ROWS = 64  # rows on which member_probs' mean is checked against Predictor.predict


class BenchError(Exception):
    """A one-line reason the bench cannot run (bad data, model dir or card)."""


@dataclass
class Scored:
    """One model setting (a member or the ensemble, with or without TTA) scored on every split."""

    model: str
    tta: str
    shipped: bool  # the setting Predictor.predict uses
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> classification_report


def settings(names: list[str], mp: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(model, tta, probs) of every member and the ensemble under each TTA mode whose views the graph has."""
    m, v = mp.shape[1], mp.shape[2]
    ttas = [(t, slice(0, n)) for t, n in modes_within(v)]
    out = []
    if m > 1:
        out += [(f"member {names[k]}", t, mp[:, k, s].mean(1)) for k in range(m) for t, s in ttas]
    whole = f"ensemble of {m}" if m > 1 else f"single model {names[0]}"
    out += [(whole, t, mp[:, :, s].mean((1, 2))) for t, s in ttas]
    return out


def score_variant(p: Predictor, data: dict[str, Split]) -> list[Scored]:
    """Score every setting of the variant on every split; the shipped one is what ``p.predict`` returns."""
    spec = p.manifest.variants[p.variant]
    names = [m.name for m in spec.members]
    rows: dict[tuple[str, str], Scored] = {}
    for split in SPLITS:
        x, y = data[split].x, data[split].y
        try:
            mp = p.predict_members(x)
        except MissingOutputError:  # an older (or post-processed) graph: only the shipped setting
            probs = [(f"{p.variant} (no member_probs)", spec.tta, p.predict(x))]
            shipped = {(probs[0][0], spec.tta)}
        else:
            if len(names) != mp.shape[1]:
                names = [f"member{i}" for i in range(mp.shape[1])]
            gap = float(np.abs(mp[:CHECK_ROWS].mean((1, 2)) - p.predict(x[:CHECK_ROWS])).max(initial=0.0))
            if gap > 1e-5:
                raise BenchError(f"variant {p.variant}: mean of member_probs differs from probs by {gap:.2g}")
            probs = settings(names, mp)
            if mp.shape[2] != view_count(spec.tta):
                raise BenchError(f"variant {p.variant}: TTA {spec.tta} has {view_count(spec.tta)} views, "
                                 f"member_probs has {mp.shape[2]}")
            shipped = {(probs[-1][0], spec.tta)}
        for model, tta, pr in probs:
            row = rows.setdefault((model, tta), Scored(model, tta, (model, tta) in shipped))
            row.reports[split] = classification_report(y, pr.astype(np.float64))
    return list(rows.values())


def _table(header: list[str], rows: list[list[str]], left: int) -> str:
    """A Markdown table; the first ``left`` columns are text (left-aligned), the rest numbers."""
    aligns = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def accuracy_table(results: dict[str, list[Scored]]) -> str:
    header = ["variant", "model", "TTA"] + [f"{s} {k}" for s in SPLITS for k in ("acc", "bal. acc", "ECE")]
    rows = []
    for variant, scored in results.items():
        for r in scored:
            cells = [f"{r.reports[s][k]:.4f}" for s in SPLITS for k in ("accuracy", "balanced_accuracy", "ece")]
            model = f"**{r.model}** (shipped)" if r.shipped else r.model
            rows.append([variant, model, r.tta, *cells])
    return _table(header, rows, 3)


def recall_table(results: dict[str, list[Scored]]) -> str:
    header = ["variant", "split", "n"] + list(LABELS)
    rows = []
    for variant, scored in results.items():
        r = next(s for s in scored if s.shipped)
        for split in SPLITS:
            rep = r.reports[split]
            rows.append([variant, split, str(rep["n"])] + [f"{rep['per_class'][c]['recall']:.3f}" for c in LABELS])
    return _table(header, rows, 2)


def calibration_table(manifest: Manifest, results: dict[str, list[Scored]]) -> str:
    header = ["variant", "fitted on", "T", "images", "NLL before → after", "ECE before → after",
              "ECE PrivateTest (bench)"]
    rows = []
    for variant, scored in results.items():
        v = manifest.variants[variant]
        c = v.calibration
        ece = next(s for s in scored if s.shipped).reports["PrivateTest"]["ece"]
        if c:
            rows.append([variant, f"{c.fitted_on} (TTA {v.tta})", f"{v.temperature:.4f}", str(c.images),
                         f"{c.nll_before:.4f} → {c.nll_after:.4f}", f"{c.ece_before:.4f} → {c.ece_after:.4f}",
                         f"{ece:.4f}"])
        else:
            rows.append([variant, "not fitted (given)", f"{v.temperature:.4f}", "–", "–", "–", f"{ece:.4f}"])
    return _table(header, rows, 2)


def files_table(manifest: Manifest) -> str:
    rows = []
    for variant, v in manifest.variants.items():
        graphs = [(kind, name) for kind, name in (("forward", v.forward), ("saliency", v.saliency)) if name]
        weights = dict.fromkeys(e for _, name in graphs for e in manifest.files[name].external)
        for kind, name in graphs + [("weights (both graphs)", w) for w in weights]:
            e = manifest.files[name]
            rows.append([variant, f"`{name}`", kind, f"`{e.sha256}`", f"{e.bytes / 1e6:.2f}"])
    total = sum(e.bytes for e in manifest.files.values())
    return _table(["variant", "file", "graph", "sha256", "MB"], rows, 4) + f"\n\nTotal: {total / 1e6:.2f} MB in {len(manifest.files)} files."


def render(manifest: Manifest, results: dict[str, list[Scored]], data_name: str, sizes: dict[str, int]) -> str:
    """The Markdown block: the same text is printed and written into the card."""
    n = ", ".join(f"{s} {sizes[s]:,}" for s in SPLITS)
    return "\n\n".join([
        f"Generated by `python bench/accuracy.py` from the shipped ONNX files through `fer_runtime` on "
        f"`{data_name}` ({n} images). Bold: what `Predictor.predict` returns. ECE: 15 bins, top-1 "
        "confidence; members are scored at their variant's temperature.",
        "### Accuracy\n\n" + accuracy_table(results),
        "### Per-class recall (shipped setting)\n\n" + recall_table(results),
        "### Calibration\n\n" + calibration_table(manifest, results),
        f"Confusion matrices ({CONFUSION_SPLIT}, shipped setting, rows normalised): "
        + ", ".join(f"`confusion_{v}.png`" for v in results) + ".",
        "### Files\n\n" + files_table(manifest),
    ])


def replace_block(card: Path, block: str) -> None:
    """Replace the text between the bench markers in ``card`` with ``block``, atomically."""
    try:
        text = card.read_text(encoding="utf-8")
    except OSError as e:
        raise BenchError(f"cannot read the card {card}: {e.strerror}") from None
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise BenchError(f"{card} must contain {BEGIN} and then {END}, once each")
    head, rest = text.split(BEGIN)
    atomic_write(card, f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")


def confusion_png(variant: str, scored: list[Scored], tta: str, out_dir: Path) -> Path:
    r = next(s for s in scored if s.shipped)
    rep = r.reports[CONFUSION_SPLIT]
    title = (f"{variant} ({r.model}, TTA {tta}): {CONFUSION_SPLIT}, n={rep['n']}\n"
             f"accuracy {rep['accuracy']:.4f}, balanced {rep['balanced_accuracy']:.4f}; rows = true class")
    return plot_confusion(np.array(rep["confusion"]), title, out_dir / f"confusion_{variant}.png", percent=True)


def load_data(path: Path) -> tuple[dict[str, Split], str]:
    try:
        src = load_kaggle_csv(path)
    except (DataFormatError, OSError) as e:
        raise BenchError(str(e)) from None
    missing = [s for s in SPLITS if s not in src.splits or len(src.splits[s]) == 0]
    if missing:
        raise BenchError(f"{path} has no {', '.join(missing)} rows; a Kaggle fer2013 CSV is needed")
    return {s: src.splits[s] for s in SPLITS}, path.name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None, help="exported model dir (default: the packaged models)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle fer2013.csv(.gz)")
    ap.add_argument("--card", type=Path, default=None, help="model card whose bench block to rewrite")
    ap.add_argument("--png-dir", type=Path, default=None, help="where confusion_<variant>.png go (default: model dir)")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    t0 = time.perf_counter()
    try:
        model_dir = args.model_dir or default_model_dir()
        data, name = load_data(args.data)
        manifest = read_manifest(model_dir)
        results: dict[str, list[Scored]] = {}
        for variant in manifest.variants:
            print(f"scoring {variant} ...", file=sys.stderr, flush=True)
            p = Predictor(model_dir, model=variant, device="cpu", batch_size=args.batch_size)
            p.load_saliency()  # checks the saliency file's sha256 too
            results[variant] = score_variant(p, data)
            confusion_png(variant, results[variant], manifest.variants[variant].tta, args.png_dir or model_dir)
        block = render(manifest, results, name, {s: len(data[s].y) for s in SPLITS})
        print(block)
        if args.card:
            replace_block(args.card, block)
            print(f"updated {args.card}", file=sys.stderr)
    except (BenchError, FerRuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bench took {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
