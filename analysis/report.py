"""Report (``fer-analyze report``): run every analysis for a run and gather them in one self-contained HTML page.

The page embeds its figures as base64 PNG data URIs and has inline CSS only, so the single file
can be opened anywhere; the PNGs and CSV/JSON files stay beside it.
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Callable

from fer_analysis.adversarial import EPSILONS, analyze_adversarial
from fer_analysis.class_max import analyze_class_max
from fer_analysis.compare import analyze_compare, run_facts
from fer_analysis.confusion import analyze_confusion
from fer_analysis.filters import analyze_filters
from fer_analysis.inputs import AnalysisError, Target, conv_layers, open_target, pick_layer, share_data
from fer_analysis.layer_outputs import analyze_layer_outputs
from fer_analysis.mistakes import analyze_mistakes
from fer_analysis.saliency import FACE_REGIONS, analyze_saliency, engines_agree, region_area
from fer_runtime.atomic import atomic_write
from fer_runtime.labels import LABELS
from fer_train import runs

REPORT = "report.html"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:34px;border-bottom:2px solid #e3e3e3;padding-bottom:4px}
.meta{color:#666;font-size:13px}.note{color:#555;font-size:14px;margin:6px 0 10px}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin:8px 0 14px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.toc a{margin-right:12px}
.key{background:#f7f9fc;border-left:4px solid #4a7bd0;padding:8px 12px;margin:12px 0}.key li{margin:2px 0}
.warn{color:#a33}.row{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start}.row>div{min-width:0}
"""


def _row(*cells: str) -> str:
    """Side-by-side blocks (they wrap on narrow screens)."""
    return "<div class='row'>" + "".join(f"<div>{c}</div>" for c in cells) + "</div>"


def _img(path: str | Path, alt: str, caption: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _section(anchor: str, title: str, note: str, body: str) -> str:
    return f'<h2 id="{anchor}">{html.escape(title)}</h2><p class="note">{note}</p>{body}'


def _confusion_html(r: dict[str, Any]) -> str:
    s = r["summary"]
    rows = [[p["true"], p["predicted"], _pct(p["rate"]), p["count"], p["support"]] for p in s["pairs"]]
    recall = [[k, _pct(v)] for k, v in s["recall"].items()]
    return _row(_img(r["figures"][0], "confusion matrix", "Rows: true class, normalised to 1 (recall on the diagonal)."),
                _img(r["figures"][1], "most confused pairs") + _row(_table(["true", "predicted as", "rate", "count", "of"], rows),
                                                                     _table(["class", "recall"], recall)))


def _saliency_html(r: dict[str, Any]) -> str:
    s = r["summary"]
    rows_fig = _img(r["figures"][0], "saliency rows", "Original | saliency over the face | pixels with saliency "
                    f">= {s['threshold']:g} (and their share of the image).")
    parts = []
    agr = s.get("engine_agreement")
    if s.get("engine_error"):
        parts.append(f'<p class="warn">ONNX saliency was asked for but is unavailable, so the TF engine was used: '
                     f'{html.escape(s["engine_error"])}</p>')
    if agr:
        ok = engines_agree(agr)
        parts.append(f'<p class="{"note" if ok else "warn"}">The maps below come from the exported ONNX gradient graph '
                     f'({html.escape(agr["file"])}{", exported on the fly" if not agr["model_dir"] else ""}). '
                     f'Agreement with TF GradientTape on the Keras model: cosine min {agr["cosine_min"]:.6f}, '
                     f'mean {agr["cosine_mean"]:.6f}; max |difference| {agr["max_abs_diff"]:.2e}.</p>')
    side = []
    if len(r["figures"]) > 1:
        side.append(_img(r["figures"][1], "mean saliency per class"))
        rows = [[c, v["n"], *[_pct(v["regions"][k]) for k in FACE_REGIONS]] for c, v in s["class_means"].items()]
        area = [region_area(k) for k in FACE_REGIONS]
        rows.append(["(share of image area)", "", *[_pct(a) for a in area]])
        side.append("<p class='note'>Share of the saliency mass in horizontal face bands (rows "
                    + ", ".join(f"{k} {a}-{b - 1}" for k, (a, b) in FACE_REGIONS.items())
                    + "), averaged over correctly classified faces:</p>"
                    + _table(["class", "n", *FACE_REGIONS], rows))
    return "".join(parts) + _row(rows_fig, "".join(side))


def _adversarial_html(r: dict[str, Any]) -> str:
    s = r["summary"]
    rows = [[f"{t['eps_pixels']:g}/255", _pct(t["fgsm_accuracy"]), _pct(t["ifgsm_accuracy"])] for t in s["table"]]
    left = _img(r["figures"][0], "accuracy against epsilon") + _table(["epsilon", "FGSM", f"I-FGSM ({s['ifgsm_steps']} steps)"], rows)
    if len(r["figures"]) > 1:
        return _row(left, _img(r["figures"][1], "adversarial examples",
                               "Original (clean prediction) | perturbation (pixels) | adversarial (prediction)."))
    return left


def _compare_html(r: dict[str, Any]) -> str:
    a, b = r["summary"]["runs"]
    rows = [["architecture", a["arch"], b["arch"]], ["parameters", a["params"], b["params"]],
            ["accuracy", _pct(a["accuracy"]), _pct(b["accuracy"])],
            ["balanced accuracy", _pct(a["balanced_accuracy"]), _pct(b["balanced_accuracy"])],
            ["macro F1", a["macro_f1"], b["macro_f1"]], ["NLL", a["nll"], b["nll"]], ["ECE", a["ece"], b["ece"]],
            ["best epoch / epochs", f"{a['best_epoch']} / {a['epochs']}", f"{b['best_epoch']} / {b['epochs']}"]]
    rows += [[f"recall {l}", _pct(a["recall"][l]), _pct(b["recall"][l])] for l in LABELS]
    return _img(r["figures"][0], "comparison") + _table(["", a["name"], b["name"]], rows)


def _filters_html(r: dict[str, Any]) -> str:
    s = r["summary"]
    return (_img(r["figures"][0], "filter visualisation")
            + f"<p class='note'>{s['raised']} of {s['filters']} filters' mean activation rose during the ascent "
              f"(mean {s['mean_initial']:.3g} on noise &rarr; {s['mean_final']:.3g}); strongest filters: "
              f"{', '.join('#' + str(i) for i in s['top_filters'])}.</p>")


def _class_max_html(r: dict[str, Any]) -> str:
    s = r["summary"]
    rows = [[c, v["initial_logit"], v["final_logit"], _pct(v["softmax"])] for c, v in s["classes"].items()]
    return _row(_img(r["figures"][0], "class maximisation"), _table(["class", "logit at start", "logit at end", "softmax"], rows))


def _key_findings(res: dict[str, dict[str, Any]]) -> str:
    items = []
    c = res["confusion"]["summary"]
    items.append(f"Accuracy on {c['split']}: <b>{_pct(c['accuracy'])}</b> (balanced {_pct(c['balanced_accuracy'])}, "
                 f"n={c['n']}).")
    seen = {k: v for k, v in c["recall"].items() if c["support"][k] > 0}  # a class absent from the split is not "hard"
    worst = sorted(seen.items(), key=lambda kv: kv[1])[:2]
    best = max(seen.items(), key=lambda kv: kv[1])
    items.append(f"Best recognised: {best[0]} (recall {_pct(best[1])}); hardest: "
                 + ", ".join(f"{k} ({_pct(v)})" for k, v in worst) + ".")
    items.append("Most confused: " + "; ".join(f"{p['true']} &rarr; {p['predicted']} {_pct(p['rate'])}"
                                               for p in c["pairs"][:3]) + ".")
    if "saliency" in res and res["saliency"]["summary"]["class_means"]:
        means = res["saliency"]["summary"]["class_means"]
        tot = {k: sum(v["regions"][k] for v in means.values()) / len(means) for k in FACE_REGIONS}
        area = {k: region_area(k) for k in FACE_REGIONS}
        top = sorted(tot, key=lambda k: -tot[k] / area[k])[:2]
        items.append("Relative to their area, saliency concentrates most on the "
                     + " and ".join(f"{k} band ({_pct(tot[k])} of the saliency on {_pct(area[k])} of the image)" for k in top)
                     + ", averaged over classes. Per class, the most salient band relative to its area: "
                     + ", ".join(f"{c} {max(FACE_REGIONS, key=lambda k: v['regions'][k] / area[k])}"
                                 for c, v in means.items()) + ".")
    if "adversarial" in res:
        t = {r["eps_pixels"]: r for r in res["adversarial"]["summary"]["table"]}
        items.append("Under FGSM, accuracy falls " + ", ".join(f"to {_pct(t[e]['fgsm_accuracy'])} at {e:g}/255"
                                                              for e in (1.0, 2.0, 4.0) if e in t)
                     + (f" (from {_pct(t[0.0]['fgsm_accuracy'])} clean; n={res['adversarial']['summary']['n']})" if 0.0 in t else "")
                     + "; iterative FGSM: " + ", ".join(f"{_pct(t[e]['ifgsm_accuracy'])} at {e:g}/255"
                                                        for e in (1.0, 2.0, 4.0) if e in t) + ".")
    if "compare" in res:
        a, b = res["compare"]["summary"]["runs"]
        items.append(f"{html.escape(a['name'])} ({a['arch']}, {a['params']:,} params) reaches {_pct(a['accuracy'])} against "
                     f"{_pct(b['accuracy'])} for {html.escape(b['name'])} ({b['arch']}, {b['params']:,} params).")
    return "<div class='key'><b>Key findings</b><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


SECTIONS: list[tuple[str, str, str, Callable[[dict[str, Any]], str]]] = [
    ("compare", "CNN against DNN", "Both runs on the same split: size, accuracy, learning curves and per-class recall.",
     _compare_html),
    ("confusion", "Confusion", "Which classes the model mixes up, normalised by the true class.", _confusion_html),
    ("mistakes", "Most confident mistakes", "For the most confused pairs, the errors the model was surest about "
     "(caption: split row, predicted class and its probability).", lambda r: _img(r["figures"][0], "mistakes")),
    ("saliency", "Saliency", "Gradient of the predicted class's logit with respect to each input pixel: where a small "
     "change would move the score most.", _saliency_html),
    ("filters", "What the filters respond to", "Gradient ascent from white noise on each filter's mean activation.",
     _filters_html),
    ("layer_outputs", "Feature maps", "The activations of one layer for one face (each map on its own colour scale).",
     lambda r: _img(r["figures"][0], "feature maps")),
    ("class_max", "Class maximisation", "The input that maximises each class's logit, regularised by jitter, blur and "
     "decay towards gray so it shows structure rather than noise.", _class_max_html),
    ("adversarial", "Adversarial robustness", "FGSM and iterative FGSM (L&infin;). Epsilon is in pixel units out of 255; "
     "adversarial images are clipped to [0, 255].", _adversarial_html),
]


def render_html(target: Target, res: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report page for ``target`` from the analyses' results (figures embedded as base64)."""
    present = [s for s in SECTIONS if s[0] in res]
    toc = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _, _ in present)
    body = "".join(_section(a, t, note, fn(res[a])) for a, t, note, fn in present)
    cfg = meta.get("config", {})
    arch = ", ".join(f"{k} {cfg[k]}" for k in ("arch", "filters", "blocks", "convs_per_block", "units", "dense_layers")
                     if k in cfg)
    facts = (f"Run <code>{html.escape(str(target.path))}</code>"
             + (f" ({html.escape(arch)})" if arch else "")
             + f"; {meta['params']:,} parameters"
             + (f"; best epoch {meta['best_epoch']} of {meta['epochs']} (validation accuracy {_pct(meta['best_val'])})"
                if meta.get("best_epoch") else "")
             + f". Split <b>{html.escape(target.split_name)}</b> of <code>{html.escape(str(target.source.path))}</code>."
             + f" Generated {meta['created']} in {meta['seconds']:.0f} s.")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>FER analysis: {html.escape(target.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>FER2013 model analysis: {html.escape(target.name)}</h1>"
            f"<p class='meta'>{facts}</p><p class='toc'>{toc}</p>{_key_findings(res)}{body}</body></html>\n")


def build_report(run: str | Path, out: Path, *, split: str = "PublicTest", data: str | Path | None = None,
                 compare: str | Path | None = None, engine: str = "tf", model_dir: str | Path | None = None,
                 adversarial_n: int = 300, filter_layer: str | None = None, map_layer: str | None = None,
                 steps: int = 100, seed: int = 0, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every analysis of ``run`` (and ``compare`` against ``compare``) into ``out`` and write ``report.html``."""
    t0 = time.time()
    out = Path(out)
    if steps < 1:
        raise AnalysisError(f"--steps must be >= 1, got {steps}")
    t = open_target(run, split, data)
    other = open_target(compare, split, data) if compare is not None else None
    for target in (t, other):
        if target is not None:
            target.split  # an unknown or empty split fails now, before the output folder exists
    # the layer options are checked now, not after minutes of the earlier sections; a net without convolutions
    # (the DNN baseline) has no filters or feature maps to show, so those sections are left out
    cnn = bool(conv_layers(t.models[0])) or filter_layer is not None or map_layer is not None
    if cnn:
        pick_layer(t.models[0], filter_layer, "conv", t.path)
        pick_layer(t.models[0], map_layer, "map", t.path)
    else:
        log("no convolution layers (a DNN): the filters and feature-map sections are left out")
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, dict[str, Any]] = {}
    steps_run: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("confusion", lambda: analyze_confusion(t, out)),
        ("mistakes", lambda: analyze_mistakes(t, out)),
        ("saliency", lambda: _saliency_with_fallback(t, out, engine, model_dir, seed, log)),
        *([("filters", lambda: analyze_filters(t, out, filter_layer, steps, seed=seed)),
           ("layer_outputs", lambda: analyze_layer_outputs(t, out, map_layer, index=_first_correct(t)))] if cnn else []),
        ("class_max", lambda: analyze_class_max(t, out, steps=2 * steps, seed=seed)),
        ("adversarial", lambda: analyze_adversarial(t, out, adversarial_n, EPSILONS, seed=seed, log=log)),
    ]
    if other is not None:
        share_data(t, other)
        steps_run.insert(0, ("compare", lambda: analyze_compare(t, other, out)))
    for name, fn in steps_run:
        s0 = time.time()
        log(f"{name} ...")
        res[name] = fn()
        log(f"{name} done in {time.time() - s0:.0f}s")
    facts = {"params": t.params(), "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "seconds": time.time() - t0}
    rf = run_facts(t)
    if "best_epoch" in rf:
        facts.update(config=rf["config"], best_epoch=rf["best_epoch"], best_val=rf["best_val_accuracy"], epochs=rf["epochs"])
    page = render_html(t, res, facts)
    path = out / REPORT
    atomic_write(path, page)
    runs.write_json(out / "report.json", {"run": str(t.path), "compare": str(other.path) if other else None,
                                          "split": split, "sections": {k: v["summary"] for k, v in res.items()}})
    return {"html": str(path), "bytes": path.stat().st_size, "seconds": round(time.time() - t0, 1),
            "outputs": [str(path)] + [o for r in res.values() for o in r["outputs"]]}


def _saliency_with_fallback(t: Target, out: Path, engine: str, model_dir: str | Path | None, seed: int,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """Saliency with ``engine``; if the ONNX engine cannot be had, the TF engine and a note saying why."""
    try:
        return analyze_saliency(t, out, engine=engine, model_dir=model_dir, seed=seed, log=log)
    except AnalysisError as e:
        if engine != "onnx":
            raise
        log(f"ONNX saliency unavailable ({e}); using the TF engine")
        res = analyze_saliency(t, out, engine="tf", seed=seed, log=log)
        res["summary"]["engine_error"] = str(e)
        runs.write_json(out / "saliency.json", res["summary"])
        return res


def _first_correct(t: Target) -> int:
    """The correctly classified labelled split row with the highest confidence (0 if none)."""
    rows = t.labelled_rows()
    ok = rows[t.probs[rows].argmax(1) == t.split.y[rows]]
    if len(ok) == 0:
        return 0
    return int(ok[t.probs[ok].max(1).argmax()])

