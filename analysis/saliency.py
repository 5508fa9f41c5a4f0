"""Saliency: where the model looks, per image (original | heatmap | focus mask) and per class on average.

The saliency is d(mean logit of the target class)/d(pixel): with ``engine="tf"`` TF's reference
gradient of the Keras models (:func:`fer_train.inference.reference_saliency`), with ``engine="onnx"``
the exported ONNX gradient graph (:mod:`fer_analysis.onnx_saliency`), whose agreement with TF is
recorded. Maps are normalised by :func:`fer_runtime.numeric.normalise_saliency`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_analysis.figures import SMALL, gray, grid, save, suptitle
from fer_analysis.inputs import (AnalysisError, Target, check_choice, check_image_paths, check_indices, per_class_sample,
                                 random_sample, read_images)
from fer_analysis.results import result, write_csv
from fer_runtime.choices import FOCUS_THRESHOLD
from fer_runtime.labels import IMAGE_SIZE, LABELS, NUM_CLASSES
from fer_runtime.numeric import cosine_similarity, normalise_saliency

ENGINES = ("tf", "onnx")
SALIENCY_TARGETS = ("pred", "true")
# Approximate horizontal bands of an aligned 48x48 FER2013 face (rows, end exclusive).
FACE_REGIONS = {"forehead": (0, 12), "eyes": (12, 24), "nose": (24, 32), "mouth": (32, 42), "chin": (42, 48)}


def region_area(region: str) -> float:
    """The share of the image a face band of :data:`FACE_REGIONS` covers."""
    top, bottom = FACE_REGIONS[region]
    return (bottom - top) / IMAGE_SIZE


def engines_agree(agreement: dict[str, Any]) -> bool:
    """Whether the ONNX saliency matched TF's closely enough: the export verification's cosine bound."""
    from fer_export.verify import COS_TOL

    return agreement["cosine_min"] >= COS_TOL


def region_fractions(maps: np.ndarray) -> dict[str, float]:
    """Share of total saliency mass in each face band (rows), averaged over maps."""
    total = maps.sum(axis=(1, 2))
    ok = total > 0
    if not ok.any():
        return {k: 0.0 for k in FACE_REGIONS}
    return {k: float((maps[ok, a:b].sum(axis=(1, 2)) / total[ok]).mean()) for k, (a, b) in FACE_REGIONS.items()}


def plot_saliency_rows(images: np.ndarray, maps: np.ndarray, threshold: float, captions: Sequence[tuple[str, str]],
                       title: str, path: Path) -> Path:
    """One row per image: original | saliency heatmap over the face | focus mask (pixels with saliency >= threshold).

    ``captions[i]`` is (caption of the original, caption of the heatmap), e.g. ("#12 true Fear", "pred Sad 0.61").
    """
    n = len(images)
    fig, axes = grid(n, 3)
    for i in range(n):
        img = images[i].reshape(images.shape[1], images.shape[2])
        gray(axes[i, 0], img, captions[i][0])
        gray(axes[i, 1], img, captions[i][1])
        axes[i, 1].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        gray(axes[i, 2], np.where(maps[i] >= threshold, img, 0), f"focus \u2265{threshold:g}: {(maps[i] >= threshold).mean():.0%}")
    suptitle(fig, title)
    return save(fig, path)


def plot_mean_saliency(mean_faces: np.ndarray, mean_maps: np.ndarray, counts: Sequence[int], title: str,
                       path: Path) -> Path:
    """Per class: the mean saliency map over the class's mean face (where the model looks on average)."""
    fig, axes = grid(1, len(mean_maps))
    for c, ax in enumerate(axes[0]):
        gray(ax, mean_faces[c], f"{LABELS[c]} (n={counts[c]})")
        if counts[c] == 0:
            ax.text(0.5, 0.5, "none correct", ha="center", va="center", fontsize=SMALL, transform=ax.transAxes)
            continue
        ax.imshow(mean_maps[c], cmap="jet", alpha=0.55, vmin=0, vmax=max(float(mean_maps[c].max()), 1e-6),
                  interpolation="bilinear")
    suptitle(fig, title)
    return save(fig, path)


def analyze_saliency(t: Target, out: Path, indices: Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                     per_class: int = 1, threshold: float = FOCUS_THRESHOLD, engine: str = "tf", model_dir: str | Path | None = None,
                     smooth: float = 1.0, target: str = "pred", mean_per_class: int = 50, seed: int = 0,
                     log: Any = lambda s: None) -> dict[str, Any]:
    """Rows of original | heatmap | focus mask (saliency >= ``threshold``) for chosen images or a per-class sample.

    With ``engine="onnx"`` the maps come from the exported gradient graph (``model_dir``, or the run
    exported now) and the TF saliency is computed as well to record their cosine agreement. Also
    writes per-class mean saliency maps over up to ``mean_per_class`` correctly classified images
    and the share of saliency per face band.
    """
    from fer_train.inference import predict_probs, reference_saliency

    check_choice("--engine", engine, ENGINES)
    check_choice("--target", target, SALIENCY_TARGETS)
    if not 0.0 < threshold <= 1.0:
        raise AnalysisError(f"--threshold must be in (0, 1], got {threshold:g}")
    if images:
        check_image_paths(images, t.split_name)
        if target == "true":
            raise AnalysisError("--target true needs labelled rows; use --index with --target true, or --target pred with --image")
        if indices:
            raise AnalysisError("give either --index rows or --image files, not both")
        x = read_images(images, t.split_name)
        y = np.full(len(x), -1, np.int64)
        names = [Path(p).name for p in images]
    else:
        rows = check_indices(indices, t.split, t.split_name) if indices else per_class_sample(t.split, per_class, seed)
        x, y = t.split.x[rows].astype(np.float32), t.split.y[rows]
        names = [f"#{r}" for r in rows]
        if target == "true" and (y < 0).any():
            raise AnalysisError(f"--target true: split {t.split_name!r} has unlabelled rows; use --target pred")
    # the class means need the run's data: load it now, before any figure is written (and only then)
    labelled = np.flatnonzero(t.split.y >= 0) if mean_per_class > 0 else np.empty(0, np.int64)
    probs = predict_probs(t.models, x)
    pred = probs.argmax(1)
    cls = pred if target == "pred" else y
    grad_tf = reference_saliency(t.models, x, cls)
    grad, agreement = grad_tf, None
    if engine == "onnx":
        from fer_analysis.onnx_saliency import exported_saliency

        with exported_saliency(t.path, model_dir, log=log) as sal:
            grad, onnx_probs = sal(x, cls)
            if sal.tta != "none":
                grad_tf = reference_saliency(t.models, x, cls, tta=sal.tta)
            ref_probs = predict_probs(t.models, x, tta=sal.tta, temperature=sal.temperature)  # as the graph computes them
            cos = cosine_similarity(grad, grad_tf)
            agreement = {"model_dir": None if sal.exported_on_the_fly else str(sal.model_dir), "variant": sal.variant,
                         "file": sal.filename, "tta": sal.tta, "cosine_min": float(cos.min()),
                         "cosine_mean": float(cos.mean()), "max_abs_diff": float(np.abs(grad - grad_tf).max()),
                         "probs_max_abs_diff": float(np.nanmax(np.abs(onnx_probs - ref_probs)))}
    maps = normalise_saliency(grad, smooth)
    caps = [(f"{n[:18]}{'' if yy < 0 else ' true ' + LABELS[yy]}", f"pred {LABELS[p]} {probs[i, p]:.2f}")
            for i, (n, yy, p) in enumerate(zip(names, y, pred))]
    title = (f"{t.name}: saliency of the {'predicted' if target == 'pred' else 'true'} class ({engine.upper()} engine, "
             f"|grad| smoothed \u03c3={smooth:g}px)")
    f1 = plot_saliency_rows(x, maps, threshold, caps, title, out / "saliency.png")
    per_image = [{"image": n, "true": None if yy < 0 else LABELS[yy], "predicted": LABELS[p], "confidence": float(probs[i, p]),
                  "saliency_class": LABELS[c], "focus_fraction": float((maps[i] >= threshold).mean()),
                  "regions": region_fractions(maps[i:i + 1])}
                 for i, (n, yy, p, c) in enumerate(zip(names, y, pred, cls))]

    # Where the model looks on average: correctly classified rows of each class, saliency of the true class.
    figures, data = [f1], []
    region_rows, mean_summary = [], {}
    if mean_per_class > 0 and len(labelled):
        correct = np.zeros(len(t.split), bool)
        correct[labelled] = t.probs[labelled].argmax(1) == t.split.y[labelled]
        picks = []
        for c in range(NUM_CLASSES):
            r = np.flatnonzero(correct & (t.split.y == c))
            picks.append(r[random_sample(len(r), mean_per_class, seed)] if len(r) else r)
        allr = np.concatenate(picks)
        allm = normalise_saliency(reference_saliency(t.models, t.split.x[allr].astype(np.float32), t.split.y[allr]), smooth)
        faces, means, counts, start = [], [], [], 0
        for c, r in enumerate(picks):
            counts.append(int(len(r)))
            mm, start = allm[start:start + len(r)], start + len(r)
            if len(r) == 0:
                faces.append(np.full((IMAGE_SIZE, IMAGE_SIZE), 128.0))
                means.append(np.zeros((IMAGE_SIZE, IMAGE_SIZE)))
                continue
            faces.append(t.split.x[r, :, :, 0].astype(np.float32).mean(0))
            means.append(mm.mean(0))
            fr = region_fractions(mm)
            mean_summary[LABELS[c]] = {"n": int(len(r)), "regions": fr,
                                       "focus_fraction": float((mm >= threshold).mean())}
            region_rows.append([LABELS[c], int(len(r)), *[fr[k] for k in FACE_REGIONS]])
        figures.append(plot_mean_saliency(np.stack(faces), np.stack(means), counts,
                                          f"{t.name}: mean saliency of correctly classified {t.split_name} faces "
                                          f"(up to {mean_per_class} per class, TF engine)", out / "saliency_mean.png"))
        region_rows.append(["(area share)", 0, *[region_area(k) for k in FACE_REGIONS]])
        data.append(write_csv(out / "saliency_regions.csv", ["class", "n", *FACE_REGIONS], region_rows))
    summary = {"run": str(t.path), "split": t.split_name, "engine": engine, "target": target, "threshold": threshold,
               "smooth_sigma": smooth, "face_regions_rows": {k: list(v) for k, v in FACE_REGIONS.items()},
               "images": per_image, "class_means": mean_summary, "engine_agreement": agreement}
    return result("saliency", figures, data, summary, out)
