"""The analyses behind ``fer-train analyze``: each writes its PNGs plus a CSV/JSON of the numbers behind them.

Every ``analyze_*`` function takes a :class:`~fer_train.analysis_inputs.Target` (run + split) and an
output directory, and returns ``{"analysis", "figures", "outputs", "summary"}`` where ``summary`` is
also what its JSON file holds. The TensorFlow maths is in :mod:`fer_train.analysis_gradients`, the
figures in :mod:`fer_train.analysis_figures`.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_runtime.labels import IMAGE_SIZE, LABELS, NUM_CLASSES
from fer_train import runs
from fer_train.analysis_inputs import (AnalysisError, Target, check_choice, check_image_paths, check_indices,
                                       per_class_sample, pick_layer, random_sample, read_images)

EPSILONS = (0.0, 1.0, 2.0, 4.0, 8.0)  # pixel units: e/255 of the [0, 1] range
ENGINES = ("tf", "onnx")
SALIENCY_TARGETS = ("pred", "true")
# Approximate horizontal bands of an aligned 48x48 FER2013 face (rows, end exclusive).
FACE_REGIONS = {"forehead": (0, 12), "eyes": (12, 24), "nose": (24, 32), "mouth": (32, 42), "chin": (42, 48)}


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    runs.atomic_write_text(path, buf.getvalue())
    return path


def _result(name: str, figures: Sequence[Path], data: Sequence[Path], summary: dict[str, Any], out: Path) -> dict[str, Any]:
    js = out / f"{name}.json"
    runs.write_json(js, summary)
    return {"analysis": name, "figures": [str(f) for f in figures],
            "outputs": [str(p) for p in [*figures, *data, js]], "summary": summary}


def _rows_labelled(t: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, true labels, predicted labels) of the split's labelled rows."""
    rows = t.labelled_rows()
    return rows, t.split.y[rows], t.probs[rows].argmax(1)


def top_confused_pairs(cm: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` off-diagonal (true -> predicted) cells with the highest row-normalised rate (count breaks ties)."""
    cm = np.asarray(cm)
    support = cm.sum(1)
    cells = [(cm[i, j] / support[i], cm[i, j], i, j) for i in range(len(cm)) for j in range(len(cm))
             if i != j and support[i] > 0 and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [{"true": LABELS[i], "predicted": LABELS[j], "true_index": int(i), "predicted_index": int(j),
             "rate": float(r), "count": int(n), "support": int(support[i])} for r, n, i, j in cells[:k]]


def analyze_confusion(t: Target, out: Path, top: int = 5) -> dict[str, Any]:
    """Row-normalised confusion heatmap and the ``top`` most-confused class pairs with their rates."""
    from fer_train.analysis_figures import compact_png, plot_confused_pairs
    from fer_train.metrics import classification_report
    from fer_train.plots import plot_confusion

    rows = t.labelled_rows()
    rep = classification_report(t.split.y[rows], t.probs[rows])
    cm = np.array(rep["confusion"])
    pairs = top_confused_pairs(cm, top)
    title = f"{t.name} on {t.split_name}: acc {rep['accuracy']:.3f}, balanced {rep['balanced_accuracy']:.3f}"
    f1 = compact_png(plot_confusion(cm, title, out / "confusion.png"))
    f2 = plot_confused_pairs(pairs, f"Most confused pairs ({t.name}, {t.split_name})", out / "confused_pairs.png")
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    c1 = _write_csv(out / "confusion.csv", ["true", *[f"pred_{l}" for l in LABELS], "support"],
                    [[LABELS[i], *[float(v) for v in norm[i]], int(cm[i].sum())] for i in range(NUM_CLASSES)])
    c2 = _write_csv(out / "confused_pairs.csv", ["true", "predicted", "rate", "count", "support"],
                    [[p["true"], p["predicted"], p["rate"], p["count"], p["support"]] for p in pairs])
    summary = {"run": str(t.path), "split": t.split_name, "n": rep["n"], "accuracy": rep["accuracy"],
               "balanced_accuracy": rep["balanced_accuracy"], "macro_f1": rep["macro_f1"],
               "recall": {k: v["recall"] for k, v in rep["per_class"].items()}, "pairs": pairs,
               "confusion": cm.tolist()}
    return _result("confusion", [f1, f2], [c1, c2], summary, out)


def _region_fractions(maps: np.ndarray) -> dict[str, float]:
    """Share of total saliency mass in each face band (rows), averaged over maps."""
    total = maps.sum(axis=(1, 2))
    ok = total > 0
    if not ok.any():
        return {k: 0.0 for k in FACE_REGIONS}
    return {k: float((maps[ok, a:b].sum(axis=(1, 2)) / total[ok]).mean()) for k, (a, b) in FACE_REGIONS.items()}


def analyze_saliency(t: Target, out: Path, indices: Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                     per_class: int = 1, threshold: float = 0.6, engine: str = "tf", model_dir: str | Path | None = None,
                     smooth: float = 1.0, target: str = "pred", mean_per_class: int = 50, seed: int = 0,
                     log: Any = lambda s: None) -> dict[str, Any]:
    """Rows of original | heatmap | focus mask (saliency >= ``threshold``) for chosen images or a per-class sample.

    The saliency is d(mean logit of the target class)/d(pixel): with ``engine="tf"`` by GradientTape on the Keras
    models, with ``engine="onnx"`` by the exported ONNX gradient graph (``model_dir``, or the run exported now);
    with ONNX the TF saliency is computed as well and their cosine agreement recorded. Also writes per-class mean
    saliency maps over up to ``mean_per_class`` correctly classified images and the share of saliency per face band.
    """
    from fer_train.analysis_figures import plot_mean_saliency, plot_saliency_rows
    from fer_train.analysis_gradients import cosine, saliency_maps, saliency_tf
    from fer_train.evaluate import predict_probs

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
    probs = predict_probs(t.models, x)
    pred = probs.argmax(1)
    cls = pred if target == "pred" else y
    grad_tf = saliency_tf(t.models, x, cls)
    grad, agreement = grad_tf, None
    if engine == "onnx":
        from fer_train.analysis_onnx import exported_saliency

        with exported_saliency(t.path, model_dir, log=log) as sal:
            grad, onnx_probs = sal(x, cls)
            if sal.tta != "none":
                grad_tf = saliency_tf(t.models, x, cls, tta=sal.tta)
            cos = cosine(grad, grad_tf)
            agreement = {"model_dir": None if sal.exported_on_the_fly else str(sal.model_dir), "variant": sal.variant,
                         "file": sal.filename, "tta": sal.tta, "cosine_min": float(cos.min()),
                         "cosine_mean": float(cos.mean()), "max_abs_diff": float(np.abs(grad - grad_tf).max()),
                         "probs_max_abs_diff": float(np.nanmax(np.abs(onnx_probs - probs))) if sal.tta == "none" else None}
    maps = saliency_maps(grad, smooth)
    caps = [(f"{n[:18]}{'' if yy < 0 else ' true ' + LABELS[yy]}", f"pred {LABELS[p]} {probs[i, p]:.2f}")
            for i, (n, yy, p) in enumerate(zip(names, y, pred))]
    title = (f"{t.name}: saliency of the {'predicted' if target == 'pred' else 'true'} class ({engine.upper()} engine, "
             f"|grad| smoothed \u03c3={smooth:g}px)")
    f1 = plot_saliency_rows(x, maps, threshold, caps, title, out / "saliency.png")
    per_image = [{"image": n, "true": None if yy < 0 else LABELS[yy], "predicted": LABELS[p], "confidence": float(probs[i, p]),
                  "saliency_class": LABELS[c], "focus_fraction": float((maps[i] >= threshold).mean()),
                  "regions": _region_fractions(maps[i:i + 1])}
                 for i, (n, yy, p, c) in enumerate(zip(names, y, pred, cls))]

    # Where the model looks on average: correctly classified rows of each class, saliency of the true class.
    figures, data = [f1], []
    region_rows, mean_summary = [], {}
    labelled = np.flatnonzero(t.split.y >= 0)
    if mean_per_class > 0 and len(labelled):
        correct = np.zeros(len(t.split), bool)
        correct[labelled] = t.probs[labelled].argmax(1) == t.split.y[labelled]
        picks = []
        for c in range(NUM_CLASSES):
            r = np.flatnonzero(correct & (t.split.y == c))
            picks.append(r[random_sample(len(r), mean_per_class, seed)] if len(r) else r)
        allr = np.concatenate(picks)
        allm = saliency_maps(saliency_tf(t.models, t.split.x[allr].astype(np.float32), t.split.y[allr]), smooth)
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
            fr = _region_fractions(mm)
            mean_summary[LABELS[c]] = {"n": int(len(r)), "regions": fr,
                                       "focus_fraction": float((mm >= threshold).mean())}
            region_rows.append([LABELS[c], int(len(r)), *[fr[k] for k in FACE_REGIONS]])
        figures.append(plot_mean_saliency(np.stack(faces), np.stack(means), counts,
                                          f"{t.name}: mean saliency of correctly classified {t.split_name} faces "
                                          f"(up to {mean_per_class} per class, TF engine)", out / "saliency_mean.png"))
        area = {k: (b - a) / IMAGE_SIZE for k, (a, b) in FACE_REGIONS.items()}
        region_rows.append(["(area share)", 0, *[area[k] for k in FACE_REGIONS]])
        data.append(_write_csv(out / "saliency_regions.csv", ["class", "n", *FACE_REGIONS], region_rows))
    summary = {"run": str(t.path), "split": t.split_name, "engine": engine, "target": target, "threshold": threshold,
               "smooth_sigma": smooth, "face_regions_rows": {k: list(v) for k, v in FACE_REGIONS.items()},
               "images": per_image, "class_means": mean_summary, "engine_agreement": agreement}
    return _result("saliency", figures, data, summary, out)


def _grid_cols(n: int) -> int:
    return min(n, 16 if n >= 64 else 8)


def analyze_filters(t: Target, out: Path, layer: str | None = None, steps: int = 100, step_size: float = 1.0,
                    seed: int = 0) -> dict[str, Any]:
    """Gradient ascent from white noise for every filter of a conv layer (first member), drawn as a grid."""
    from fer_train.analysis_figures import plot_image_grid
    from fer_train.analysis_gradients import filter_ascent

    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    model = t.models[0]
    layer = pick_layer(model, layer, "conv", t.path)
    imgs, first, last = filter_ascent(model, layer, steps, step_size, seed)
    n = len(imgs)
    caps = [f"#{i} {last[i]:.3g}" for i in range(n)]
    title = (f"{t.name}: {layer}, {n} filters, {steps} gradient-ascent steps from noise "
             f"(caption: filter, final mean activation)")
    fig = plot_image_grid(imgs, caps, _grid_cols(n), title, out / "filters.png", panel=0.9 if n > 32 else 1.2)
    c = _write_csv(out / "filters.csv", ["filter", "initial_activation", "final_activation"],
                   [[i, float(first[i]), float(last[i])] for i in range(n)])
    summary = {"run": str(t.path), "member": str(runs.member_models(t.path)[0]), "layer": layer, "filters": n, "steps": steps, "step_size": step_size,
               "raised": int((last > first).sum()), "mean_initial": float(first.mean()), "mean_final": float(last.mean()),
               "top_filters": [int(i) for i in np.argsort(-last)[:8]]}
    return _result("filters", [fig], [c], summary, out)


def analyze_layer_outputs(t: Target, out: Path, layer: str | None = None, index: int | None = None,
                          image: str | Path | None = None, max_maps: int = 256) -> dict[str, Any]:
    """The feature maps of a layer (first member) for one image (split row ``index`` or an ``image`` file), as a grid."""
    from fer_train.analysis_figures import plot_feature_maps
    from fer_train.analysis_gradients import layer_outputs
    from fer_train.evaluate import predict_probs

    if image is not None and index is not None:
        raise AnalysisError("give either --index or --image, not both")
    if image is not None:
        check_image_paths([image], t.split_name)
    model = t.models[0]
    layer = pick_layer(model, layer, "map", t.path)
    if image is not None:
        x, name, true = read_images([image], t.split_name)[0], Path(image).name, -1
    else:
        row = int(check_indices([index or 0], t.split, t.split_name)[0])
        x, name, true = t.split.x[row].astype(np.float32), f"#{row}", int(t.split.y[row])
    maps = layer_outputs(model, layer, x)
    shown = maps[..., :max_maps] if max_maps > 0 else maps
    p = predict_probs(t.models, x[None])[0]
    cap = f"{name[:14]}{' true ' + LABELS[true] if true >= 0 else ''}\npred {LABELS[p.argmax()]} {p.max():.2f}"
    cols = _grid_cols(shown.shape[-1] + 1)
    title = (f"{t.name}: {layer} output {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}"
             f"{'' if shown.shape[-1] == maps.shape[-1] else f' (first {shown.shape[-1]} shown)'}")
    fig = plot_feature_maps(x[..., 0], shown, cap, cols, title, out / "layer_outputs.png",
                            panel=0.9 if shown.shape[-1] > 32 else 1.2)
    c = _write_csv(out / "layer_outputs.csv", ["channel", "mean", "max", "active_fraction"],
                   [[ch, float(maps[..., ch].mean()), float(maps[..., ch].max()), float((maps[..., ch] > 0).mean())]
                    for ch in range(maps.shape[-1])])
    summary = {"run": str(t.path), "member": str(runs.member_models(t.path)[0]), "layer": layer, "image": name, "true": LABELS[true] if true >= 0 else None,
               "predicted": LABELS[int(p.argmax())], "confidence": float(p.max()), "shape": list(maps.shape),
               "channels_shown": int(shown.shape[-1]), "dead_channels": int((maps.max(axis=(0, 1)) <= 0).sum())}
    return _result("layer_outputs", [fig], [c], summary, out)


def analyze_class_max(t: Target, out: Path, steps: int = 200, seed: int = 0, blur_every: int = 4,
                      jitter: int = 2) -> dict[str, Any]:
    """For each class, the input maximising its mean logit (jitter + blur + decay regularised), with its softmax."""
    from fer_train.analysis_figures import plot_image_grid
    from fer_train.analysis_gradients import class_max
    from fer_train.evaluate import predict_probs

    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    imgs, trace = class_max(t.models, steps=steps, blur_every=blur_every, jitter=jitter, seed=seed)
    probs = predict_probs(t.models, imgs[..., None])
    caps = [f"{LABELS[c]}: p={probs[c, c]:.2f}" for c in range(NUM_CLASSES)]
    fig = plot_image_grid(imgs, caps, NUM_CLASSES,
                          f"{t.name}: inputs maximising each class logit ({steps} steps, jitter {jitter}px, "
                          f"blur every {blur_every})", out / "class_max.png", panel=1.6)
    c = _write_csv(out / "class_max.csv", ["class", "initial_logit", "final_logit", "softmax", *[f"p_{l}" for l in LABELS]],
                   [[LABELS[k], float(trace[0, k]), float(trace[-1, k]), float(probs[k, k]), *map(float, probs[k])]
                    for k in range(NUM_CLASSES)])
    summary = {"run": str(t.path), "steps": steps, "jitter": jitter, "blur_every": blur_every,
               "classes": {LABELS[k]: {"initial_logit": float(trace[0, k]), "final_logit": float(trace[-1, k]),
                                       "softmax": float(probs[k, k])} for k in range(NUM_CLASSES)}}
    return _result("class_max", [fig], [c], summary, out)


def analyze_adversarial(t: Target, out: Path, n: int = 500, epsilons: Sequence[float] = EPSILONS, steps: int = 10,
                        examples: int = 6, example_eps: float = 4.0, seed: int = 0,
                        log: Any = lambda s: None) -> dict[str, Any]:
    """FGSM and iterative FGSM on a sample of the split: accuracy against epsilon, and example triplets.

    Epsilons are in pixel units (e/255 of the [0, 1] range; the models take 0..255 input).
    """
    from fer_train.analysis_figures import plot_accuracy_vs_epsilon, plot_adversarial_examples
    from fer_train.analysis_gradients import fgsm, ifgsm, loss_gradient_fn
    from fer_train.evaluate import predict_probs

    eps = sorted({float(e) for e in epsilons})
    if any(e < 0 or e > 255 for e in eps):
        raise AnalysisError(f"epsilons must be within 0..255 pixel units, got {eps}")
    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    labelled = t.labelled_rows()
    rows = labelled[random_sample(len(labelled), n, seed)]
    x, y = t.split.x[rows].astype(np.float32), t.split.y[rows]
    grad_fn = loss_gradient_fn(t.models)
    table, kept = [], {}
    for e in eps:
        adv_f = fgsm(grad_fn, x, y, e)
        pf = predict_probs(t.models, adv_f)
        adv_i = ifgsm(grad_fn, x, y, e, steps)
        pi = predict_probs(t.models, adv_i)
        table.append({"eps_pixels": e, "eps": e / 255.0, "fgsm_accuracy": float((pf.argmax(1) == y).mean()),
                      "ifgsm_accuracy": float((pi.argmax(1) == y).mean())})
        log(f"epsilon {e:g}/255: FGSM {table[-1]['fgsm_accuracy']:.3f}, I-FGSM {table[-1]['ifgsm_accuracy']:.3f}")
        if e == 0:
            kept["clean"] = pf
        if math.isclose(e, example_eps):
            kept["adv"], kept["adv_probs"] = adv_f, pf
    f1 = plot_accuracy_vs_epsilon([r["eps_pixels"] for r in table],
                                  {"FGSM": [r["fgsm_accuracy"] for r in table],
                                   f"I-FGSM ({steps} steps)": [r["ifgsm_accuracy"] for r in table]},
                                  len(rows), f"{t.name}: accuracy under L\u221e attacks ({t.split_name} sample)",
                                  out / "adversarial_accuracy.png")
    figures = [f1]
    clean = kept.get("clean", predict_probs(t.models, x))
    shown: list[int] = []
    if "adv" in kept and examples > 0:
        ok = clean.argmax(1) == y
        flipped = np.flatnonzero(ok & (kept["adv_probs"].argmax(1) != y))
        rest = np.flatnonzero(ok & (kept["adv_probs"].argmax(1) == y))
        shown = [int(i) for i in [*flipped, *rest][:examples]]
        caps = [(f"#{rows[i]} true {LABELS[y[i]]}\nclean: {LABELS[clean[i].argmax()]} {clean[i].max():.2f}",
                 f"adversarial: {LABELS[kept['adv_probs'][i].argmax()]} {kept['adv_probs'][i].max():.2f}") for i in shown]
        if shown:
            figures.append(plot_adversarial_examples(x[shown], kept["adv"][shown], caps, example_eps,
                                                     f"{t.name}: FGSM at epsilon {example_eps:g}/255",
                                                     out / "adversarial_examples.png"))
    c = _write_csv(out / "adversarial.csv", ["eps_pixels", "eps", "fgsm_accuracy", "ifgsm_accuracy", "n"],
                   [[r["eps_pixels"], r["eps"], r["fgsm_accuracy"], r["ifgsm_accuracy"], len(rows)] for r in table])
    summary = {"run": str(t.path), "split": t.split_name, "n": int(len(rows)), "seed": seed, "ifgsm_steps": steps,
               "ifgsm_alpha": "eps/4", "units": "pixels out of 255; inputs clipped to [0, 255]", "table": table,
               "examples": [{"row": int(rows[i]), "true": LABELS[y[i]], "clean": LABELS[clean[i].argmax()],
                             "adversarial": LABELS[kept["adv_probs"][i].argmax()],
                             "adversarial_confidence": float(kept["adv_probs"][i].max())} for i in shown],
               "example_eps_pixels": example_eps}
    return _result("adversarial", figures, [c], summary, out)


def analyze_mistakes(t: Target, out: Path, pairs: int = 3, per_pair: int = 6) -> dict[str, Any]:
    """The most confident errors of the ``pairs`` most-confused (true -> predicted) pairs, as a labelled gallery."""
    from fer_train.analysis_figures import plot_mistake_gallery
    from fer_train.metrics import confusion_matrix

    if pairs < 1 or per_pair < 1:
        raise AnalysisError("--pairs and --per-pair must be >= 1")
    rows, y, pred = _rows_labelled(t)
    top = top_confused_pairs(confusion_matrix(y, pred), pairs)
    gallery, table = [], []
    for p in top:
        a, b = p["true_index"], p["predicted_index"]
        r = rows[(y == a) & (pred == b)]
        r = r[np.argsort(-t.probs[r, b], kind="stable")][:per_pair]
        caps = [f"#{i} \u2192{LABELS[b]} {t.probs[i, b]:.2f}" for i in r]
        gallery.append((f"{LABELS[a]}\n\u2192 {LABELS[b]}\n{p['rate']:.0%} of {LABELS[a]}", t.split.x[r, :, :, 0], caps))
        table += [[LABELS[a], LABELS[b], int(i), int(t.split.ids[i]), float(t.probs[i, b]), float(t.probs[i, a])] for i in r]
    if not gallery:
        raise AnalysisError(f"{t.name} makes no errors on {t.split_name}; nothing to show")
    fig = plot_mistake_gallery(gallery, per_pair, f"{t.name}: most confident errors of the top confused pairs "
                               f"({t.split_name}; caption: row, predicted class, its probability)", out / "mistakes.png")
    c = _write_csv(out / "mistakes.csv", ["true", "predicted", "row", "id", "confidence", "p_true"], table)
    summary = {"run": str(t.path), "split": t.split_name, "pairs": top,
               "mistakes": [dict(zip(("true", "predicted", "row", "id", "confidence", "p_true"), r)) for r in table]}
    return _result("mistakes", [fig], [c], summary, out)


def _run_facts(t: Target) -> dict[str, Any]:
    """Config, history and best epoch of a run directory (empty for ensembles and bare .keras files)."""
    p = t.path
    if not (p.is_dir() and (p / runs.CONFIG).exists()):
        return {"history": [], "config": {}}
    hist = runs.read_history(p)
    be, bv = runs.best_epoch(hist)
    return {"history": hist, "config": runs.read_json(p / runs.CONFIG).get("model", {}), "best_epoch": be,
            "best_val_accuracy": bv, "epochs": len(hist)}


def analyze_compare(a: Target, b: Target, out: Path) -> dict[str, Any]:
    """Two runs (e.g. CNN against its parameter-matched DNN) side by side: params, accuracy, curves, per-class recall."""
    from fer_train.analysis_figures import plot_compare
    from fer_train.metrics import classification_report

    if a.split_name != b.split_name:
        raise AnalysisError("both runs must be compared on the same split")
    stats = []
    for t in (a, b):
        rows = t.labelled_rows()
        rep = classification_report(t.split.y[rows], t.probs[rows])
        facts = _run_facts(t)
        stats.append({"run": str(t.path), "name": t.name, "arch": facts["config"].get("arch", "?"), "params": t.params(),
                      "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"],
                      "macro_f1": rep["macro_f1"], "nll": rep["nll"], "ece": rep["ece"],
                      "recall": {k: v["recall"] for k, v in rep["per_class"].items()},
                      "best_epoch": facts.get("best_epoch"), "epochs": facts.get("epochs"), "_history": facts["history"]})
    names = (f"{stats[0]['name']} ({stats[0]['arch']})", f"{stats[1]['name']} ({stats[1]['arch']})")
    summ = tuple(f"{s['params']:,} params, acc {s['accuracy']:.3f}" for s in stats)
    fig = plot_compare(names, (stats[0]["_history"], stats[1]["_history"]),
                       tuple([s["recall"][l] for l in LABELS] for s in stats), summ,
                       f"{names[0]} vs {names[1]} on {a.split_name}", out / "compare.png")
    c = _write_csv(out / "compare.csv", ["metric", stats[0]["name"], stats[1]["name"]],
                   [[k, *[s[k] for s in stats]] for k in ("params", "accuracy", "balanced_accuracy", "macro_f1", "nll", "ece")]
                   + [[f"recall_{l}", *[s["recall"][l] for s in stats]] for l in LABELS])
    for s in stats:
        s.pop("_history")
    summary = {"split": a.split_name, "n": int(len(a.labelled_rows())), "runs": stats}
    return _result("compare", [fig], [c], summary, out)
