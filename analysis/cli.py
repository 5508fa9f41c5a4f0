"""``fer-analyze``: confusion, saliency, filters, layer-outputs, class-max, adversarial, mistakes, compare, report.

Each subcommand takes a run, ensemble directory or .keras file and writes PNGs plus the CSV/JSON of
the numbers behind them into ``--out`` (default ``RUN/analysis``). TensorFlow is imported once a
subcommand runs, quietly unless ``--verbose``. Wrong arguments print one line ``error: ...`` that
lists the valid choices and exit with :data:`fer_runtime.exitcodes.FATAL`.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from fer_runtime.choices import FOCUS_THRESHOLD
from fer_runtime.exitcodes import cli_errors, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Analyse a trained FER2013 run: confusion, saliency, filters, feature maps, class maxima, "
                       "adversarial robustness, mistakes, CNN vs DNN, and an HTML report.")

RUN_ARG = typer.Argument(..., help="Run, ensemble directory or .keras file.")
SPLIT_OPT = typer.Option("PublicTest", "--split", help="PublicTest | PrivateTest | val (held out) | train, Training (rows the run fitted).")
OUT_OPT = typer.Option(None, "--out", help="Output directory (default: RUN/analysis).")
DATA_OPT = typer.Option(None, "--data", help="Data source (default: the one the run was trained on).")
SEED_OPT = typer.Option(0, "--seed", help="Seed of the samples and noise.")


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


_options = {"verbose": False}  # the group's options, set by _root for the command that runs


_created: list[Path] = []  # output folders this command made, removed again if it fails before writing to them


def _run(fn: Callable[[], Any], check: Callable[[], Any] = lambda: None) -> Any:
    """Call ``check`` (argument checks that need no TensorFlow), import TensorFlow (quietly unless --verbose), then
    call ``fn``; the toolkit's typed errors, a missing extra and KeyError/ValueError from bad arguments become one
    line, exit 2. A failure leaves no empty output folder."""
    with cli_errors(ValueError, KeyError):
        check()
        from fer_train.tf_env import import_tensorflow

        import_tensorflow(_options["verbose"])
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices from repeated predict calls
        try:
            return fn()
        except BaseException:
            for p in reversed(_created):  # deepest first
                with contextlib.suppress(OSError):  # never hide the error that got us here
                    if p.is_dir() and not any(p.iterdir()):
                        p.rmdir()
            raise
        finally:
            _created.clear()


def _out(run: Path, out: Optional[Path], create: bool = True) -> Path:
    """``--out``, or ``RUN/analysis``; created unless ``create`` is False (then the analysis creates it once its
    inputs are checked). A folder made here is removed again if the command fails before writing to it."""
    p = out or ((run if run.is_dir() else run.parent) / "analysis")
    if create:
        new = [d for d in (p, *p.parents) if not d.exists()]  # none if --out exists: the user's folder stays
        p.mkdir(parents=True, exist_ok=True)
        _created.extend(reversed(new))
    return p


def _target(run: Path, split: str, data: Optional[Path]):
    from fer_analysis.inputs import open_target

    return open_target(run, split, data)


def _done(res: dict[str, Any]) -> None:
    typer.echo("wrote " + ", ".join(res["outputs"]))


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show TensorFlow's own start-up and device messages.")) -> None:
    """Analyse a trained run; every subcommand writes PNGs plus a CSV/JSON of the numbers."""  # TF: in _run
    _options["verbose"] = verbose


@app.command()
def confusion(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT,
              data: Optional[Path] = DATA_OPT,
              top: int = typer.Option(5, "--top", help="How many confused pairs to list.")) -> None:
    """Normalised confusion matrix heatmap and the most-confused class pairs with their rates."""
    from fer_analysis.confusion import analyze_confusion

    res = _run(lambda: analyze_confusion(_target(run, split, data), _out(run, out), top))
    for p in res["summary"]["pairs"]:
        typer.echo(f"{p['true']:>9} -> {p['predicted']:<9} {p['rate']:.1%} ({p['count']}/{p['support']})")
    _done(res)


@app.command()
def saliency(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT, data: Optional[Path] = DATA_OPT,
             index: list[int] = typer.Option(None, "--index", help="Row index in the split (repeatable)."),
             image: list[Path] = typer.Option(None, "--image", help="Image file (repeatable)."),
             per_class: int = typer.Option(1, "--per-class", help="Sample size per class without --index/--image."),
             threshold: float = typer.Option(FOCUS_THRESHOLD, "--threshold", help="Focus mask: saliency >= this (0 < this <= 1)."),
             engine: str = typer.Option("tf", "--engine", help="tf (GradientTape) | onnx (exported gradient graph)"),
             model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Exported model dir for --engine onnx "
                                                      "(default: export the run now into a temp dir)."),
             smooth: float = typer.Option(1.0, "--smooth", help="Gaussian sigma (pixels) of the |gradient| map; 0 = raw."),
             target: str = typer.Option("pred", "--target", help="pred | true: which class's score to explain."),
             mean_per_class: int = typer.Option(50, "--mean-per-class", help="Images per class for the mean maps (0 = skip)."),
             seed: int = SEED_OPT) -> None:
    """Original | heatmap | focus mask rows for chosen images (or a per-class sample), TF or ONNX engine."""
    from fer_analysis.inputs import check_choice, check_image_paths
    from fer_analysis.saliency import ENGINES, analyze_saliency, engines_agree

    def check():
        check_choice("--engine", engine, ENGINES)
        check_image_paths(image or [], split)

    res = _run(lambda: analyze_saliency(_target(run, split, data), _out(run, out), index or None, image or None,
                                        per_class, threshold, engine, model_dir, smooth, target, mean_per_class, seed,
                                        log=_log), check)
    agr = res["summary"]["engine_agreement"]
    if agr:
        typer.echo(f"ONNX vs TF saliency: cosine min {agr['cosine_min']:.6f}, mean {agr['cosine_mean']:.6f}")
        if not engines_agree(agr):
            typer.echo(f"warning: the ONNX saliency disagrees with TF on {run}; was --model-dir exported from this run?",
                       err=True)
    _done(res)


@app.command()
def filters(run: Path = RUN_ARG, out: Optional[Path] = OUT_OPT,
            layer: Optional[str] = typer.Option(None, "--layer", help="Conv layer (default: the middle one)."),
            steps: int = typer.Option(100, "--steps", help="Gradient-ascent steps."),
            step_size: float = typer.Option(1.0, "--step-size", help="Pixels (RMS) per step."),
            seed: int = SEED_OPT) -> None:
    """Gradient ascent from white noise for every filter of a conv layer, as a grid with final activations."""
    from fer_analysis.filters import analyze_filters

    res = _run(lambda: analyze_filters(_target(run, "PublicTest", None), _out(run, out), layer, steps, step_size, seed))
    s = res["summary"]
    typer.echo(f"{s['layer']}: {s['raised']}/{s['filters']} filters raised; mean activation "
               f"{s['mean_initial']:.4g} -> {s['mean_final']:.4g}")
    _done(res)


@app.command("layer-outputs")
def layer_outputs(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT,
                  data: Optional[Path] = DATA_OPT,
                  layer: Optional[str] = typer.Option(None, "--layer", help="Layer with a feature-map output "
                                                      "(default: the first conv)."),
                  index: Optional[int] = typer.Option(None, "--index", help="Row index in the split (default 0)."),
                  image: Optional[Path] = typer.Option(None, "--image", help="Image file instead of a split row."),
                  max_maps: int = typer.Option(256, "--max-maps", help="Show at most this many channels.")) -> None:
    """The feature maps of a layer for one image, as a grid."""
    from fer_analysis.layer_outputs import analyze_layer_outputs

    res = _run(lambda: analyze_layer_outputs(_target(run, split, data), _out(run, out), layer, index, image, max_maps))
    _done(res)


@app.command("class-max")
def class_max(run: Path = RUN_ARG, out: Optional[Path] = OUT_OPT,
              steps: int = typer.Option(200, "--steps", help="Gradient-ascent steps."),
              blur_every: int = typer.Option(4, "--blur-every", help="Gaussian blur every N steps (0 = never)."),
              jitter: int = typer.Option(2, "--jitter", help="Random shift in pixels before each step."),
              seed: int = SEED_OPT) -> None:
    """For each class, the input that maximises its score (jitter + blur regularised)."""
    from fer_analysis.class_max import analyze_class_max

    res = _run(lambda: analyze_class_max(_target(run, "PublicTest", None), _out(run, out), steps, seed, blur_every, jitter))
    _done(res)


@app.command()
def adversarial(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT, data: Optional[Path] = DATA_OPT,
                n: int = typer.Option(500, "-n", "--n", help="Sample size from the split (0 = all rows)."),
                eps: list[float] = typer.Option(None, "--eps", help="Epsilon in pixels out of 255 (repeatable; "
                                                "default 0 1 2 4 8)."),
                steps: int = typer.Option(10, "--steps", help="Iterative FGSM steps (step eps/4)."),
                examples: int = typer.Option(6, "--examples", help="Example triplets to draw."),
                example_eps: float = typer.Option(4.0, "--example-eps", help="Epsilon of the examples (pixels)."),
                seed: int = SEED_OPT) -> None:
    """FGSM and iterative FGSM: accuracy against epsilon (table + plot) and example triplets."""
    from fer_analysis.adversarial import EPSILONS, analyze_adversarial

    res = _run(lambda: analyze_adversarial(_target(run, split, data), _out(run, out), n, list(eps or EPSILONS), steps,
                                           examples, example_eps, seed, log=_log))
    for r in res["summary"]["table"]:
        typer.echo(f"eps {r['eps_pixels']:g}/255: FGSM {r['fgsm_accuracy']:.4f}  I-FGSM {r['ifgsm_accuracy']:.4f}")
    _done(res)


@app.command()
def mistakes(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT, data: Optional[Path] = DATA_OPT,
             pairs: int = typer.Option(3, "--pairs", help="How many top confused pairs."),
             per_pair: int = typer.Option(6, "--per-pair", help="Errors shown per pair.")) -> None:
    """The most confident errors of the top confused pairs, as a labelled gallery."""
    from fer_analysis.mistakes import analyze_mistakes

    res = _run(lambda: analyze_mistakes(_target(run, split, data), _out(run, out), pairs, per_pair))
    _done(res)


@app.command()
def compare(run_a: Path = typer.Argument(..., help="First run (e.g. the CNN)."),
            run_b: Path = typer.Argument(..., help="Second run (e.g. the parameter-matched DNN)."),
            split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT, data: Optional[Path] = DATA_OPT) -> None:
    """Two runs side by side: parameters, accuracy, learning curves, per-class recall."""
    from fer_analysis.compare import analyze_compare
    from fer_analysis.inputs import share_data

    def go():
        a = _target(run_a, split, data)
        b = _target(run_b, split, data)
        share_data(a, b)  # load the data once
        return analyze_compare(a, b, _out(run_a, out))

    res = _run(go)
    for s in res["summary"]["runs"]:
        typer.echo(f"{s['name']:<20} {s['arch']:<8} params {s['params']:>10,}  accuracy {s['accuracy']:.4f}  "
                   f"balanced {s['balanced_accuracy']:.4f}")
    _done(res)


@app.command()
def report(run: Path = RUN_ARG, split: str = SPLIT_OPT, out: Optional[Path] = OUT_OPT, data: Optional[Path] = DATA_OPT,
           compare_run: Optional[Path] = typer.Option(None, "--compare", help="Second run to compare with (e.g. the DNN)."),
           engine: str = typer.Option("tf", "--engine", help="Saliency engine: tf | onnx (adds the TF/ONNX agreement)."),
           model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Exported model dir for --engine onnx."),
           adversarial_n: int = typer.Option(300, "--adversarial-n", help="Sample size of the adversarial sweep."),
           filter_layer: Optional[str] = typer.Option(None, "--filter-layer", help="Conv layer for the filters section."),
           map_layer: Optional[str] = typer.Option(None, "--map-layer", help="Layer for the feature-map section."),
           steps: int = typer.Option(100, "--steps", help="Gradient-ascent steps (filters; class-max uses 2x)."),
           seed: int = SEED_OPT) -> None:
    """One self-contained HTML page (images embedded) gathering every analysis for a run."""
    from fer_analysis.inputs import check_choice
    from fer_analysis.report import build_report
    from fer_analysis.saliency import ENGINES

    res = _run(lambda: build_report(run, _out(run, out, create=False), split=split, data=data, compare=compare_run,
                                    engine=engine, model_dir=model_dir, adversarial_n=adversarial_n,
                                    filter_layer=filter_layer, map_layer=map_layer, steps=steps, seed=seed, log=_log),
               lambda: check_choice("--engine", engine, ENGINES))
    typer.echo(json.dumps({k: res[k] for k in ("html", "bytes", "seconds")}))


def main() -> None:
    run_app(app, "fer-analyze")


if __name__ == "__main__":
    main()
