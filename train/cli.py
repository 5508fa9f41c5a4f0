"""``fer-train``: fit, ensemble, self-train, evaluate, predict and int8-grid (TensorFlow is imported once a command runs, quietly)."""
from __future__ import annotations

import json
from dataclasses import replace
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from fer_runtime.exitcodes import cli_errors, fatal, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Train and evaluate FER2013 Keras models (CNN family, DNN baseline, ensembles).")


_options = {"verbose": False}  # the group's options, set by _root for the command that runs


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show TensorFlow's own start-up and device messages.")) -> None:
    """Train and evaluate FER2013 Keras models."""  # TensorFlow is imported by _running(), so --help stays fast
    _options["verbose"] = verbose


@contextmanager
def _running() -> Iterator[None]:
    """A command's body: TensorFlow imported (quietly unless --verbose), errors as one line (exit 2)."""
    with cli_errors(*_errors()):
        from fer_train.tf_env import import_tensorflow

        import_tensorflow(_options["verbose"])
        yield


def _fail(msg: str) -> None:
    raise fatal(msg)


def _errors():
    """Exceptions that are the user's input being wrong (besides FerError and OSError): one line, exit 2."""
    return (ValueError, KeyError)


def _run_fit(run: Path, model_cfg, train_cfg, resume: bool, source=None, extra_train=None,
             moved: dict[str, str] | None = None) -> dict:
    """fit() with one live progress bar (on a terminal) and one printed line per epoch."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fer_train.fit import fit

    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    task = bar.add_task("starting", total=None)
    shown = {"epoch": -1}

    def progress(epoch: int, step: int, steps: int) -> None:
        if epoch != shown["epoch"]:
            shown["epoch"] = epoch
            bar.reset(task, total=steps, description=f"epoch {epoch + 1}")
        bar.update(task, completed=step)

    with bar:
        return fit(run, model_cfg, train_cfg, resume=resume, source=source, extra_train=extra_train,
                   log=lambda s: console.print(s, highlight=False, soft_wrap=True), progress=progress, moved=moved)


def _fit_summary(result: dict) -> str:
    """The human end-of-run summary of a fit() result."""
    mins = result.get("minutes_per_epoch")
    return (f"{result['run']}: {result['epochs_done']} epoch(s) done, best val_accuracy "
            f"{result['best_val_accuracy']:.4f} at epoch {result['best_epoch']} "
            f"({result['params']:,} params{f', {mins:.2f} min/epoch' if mins else ''})"
            + (f"; swa.keras val_accuracy {result['swa_val_accuracy']:.4f}" if result.get("swa_val_accuracy") is not None else ""))


def _model_config(arch, filters, blocks, convs_per_block, kernel_size, cnn_activation, cnn_activation_alpha, pool,
                  conv_dropout, units, dense_layers, dnn_activation, dnn_activation_alpha, dense_dropout, batch_norm,
                  head, match_params, act_quant=False):
    from fer_train.models import ModelConfig, match_dnn_units

    cfg = ModelConfig(arch=arch, filters=filters, blocks=blocks, convs_per_block=convs_per_block,
                      kernel_size=kernel_size, cnn_activation=cnn_activation,
                      cnn_activation_alpha=cnn_activation_alpha, pool=pool, conv_dropout=conv_dropout, units=units,
                      dense_layers=dense_layers, dnn_activation=dnn_activation,
                      dnn_activation_alpha=dnn_activation_alpha, dense_dropout=dense_dropout, batch_norm=batch_norm,
                      head=head, act_quant=act_quant)
    if match_params:
        target = _target_params(match_params)
        if arch != "dnn":
            raise ValueError("--match-params sizes the DNN baseline; use it with --arch dnn")
        cfg.units = match_dnn_units(target, cfg)
    cfg.validate()
    return cfg


def _target_params(spec: str) -> int:
    """Parameter count of a run directory, a config.json, or a plain integer."""
    from fer_train.config import read_run_config
    from fer_train.models import build_model

    if spec.isdigit():
        return int(spec)
    return int(build_model(read_run_config(Path(spec))[1]).count_params())


@app.command()
def fit(
    data: Path = typer.Option(None, "--data", help="fer2013.csv(.gz), course train.csv, or a folder of class folders."),
    out: Path = typer.Option(None, "--out", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory; with it, "
                                          "only --data, --ferplus and --teacher count: where the run's inputs are now."),
    arch: str = typer.Option("cnn", help="cnn | compact | dnn | resnet (residual units of two convs: --convs-per-block even)"),
    filters: int = typer.Option(32, help="Base filter count, doubled per block."),
    blocks: int = typer.Option(4),
    convs_per_block: int = typer.Option(2),
    kernel_size: int = typer.Option(3),
    cnn_activation: str = typer.Option("relu", help="relu | leakyrelu | elu | prelu | selu"),
    cnn_activation_alpha: float = typer.Option(0.1),
    pool: str = typer.Option("max", help="max | avg"),
    conv_dropout: float = typer.Option(0.25),
    units: int = typer.Option(256),
    dense_layers: int = typer.Option(1),
    dnn_activation: str = typer.Option("relu"),
    dnn_activation_alpha: float = typer.Option(0.1),
    dense_dropout: float = typer.Option(0.5),
    batch_norm: bool = typer.Option(True, "--batch-norm/--no-batch-norm"),
    head: str = typer.Option("flatten", help="flatten | gap (compact always uses gap)"),
    match_params: Optional[str] = typer.Option(None, help="DNN only: size it to this run's/config's parameter count."),
    epochs: int = typer.Option(40),
    batch_size: int = typer.Option(64),
    optimizer: str = typer.Option("adam", help="adam | adamw | sgd | rmsprop"),
    lr: float = typer.Option(1e-3),
    schedule: str = typer.Option("cosine", help="constant | cosine | step | plateau"),
    warmup_epochs: int = typer.Option(1),
    cycles: int = typer.Option(1, help="Cosine cycles after warm-up; > 1 saves snapshot_K.keras at the end of each "
                               "(members for `fer-train ensemble`)."),
    label_smoothing: float = typer.Option(0.0),
    class_weights: bool = typer.Option(False, "--class-weights/--no-class-weights"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    erase: float = typer.Option(0.0, help="Random erasing probability per training image (with --augment)."),
    mixup: float = typer.Option(0.0, help="Mixup alpha: blend each training image and its target with another "
                                "of the batch, weight ~ Beta(alpha, alpha) (with --augment; 0 = off)."),
    cutmix: float = typer.Option(0.0, help="CutMix alpha: paste a patch of another image of the batch, targets "
                                 "weighted by area (with --augment; 0 = off; not with --mixup)."),
    patience: int = typer.Option(15, help="Early stopping patience in epochs (on validation accuracy)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", "--validate",
                                       help="Validation fraction when the data has no Usage column."),
    random_seed: int = typer.Option(1234, help="Seeds initialisation, augmentation and (without --split-seed) "
                                    "the validation rows."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the validation rows on data without a Usage "
                                             "column (default: --random-seed)."),
    precision: str = typer.Option("auto", help="auto | float32 | bfloat16 | mixed_float16 (auto: bfloat16 on a CPU "
                                  "with AMX-BF16/AVX512-BF16, mixed_float16 on a CUDA GPU, else float32)."),
    weight_decay: float = typer.Option(1e-4, help="Decoupled weight decay for --optimizer adamw and sgd."),
    strategy: str = typer.Option("default", help="default | mirrored (local GPUs) | multiworker "
                                 "(MultiWorkerMirroredStrategy; one process per worker, configured by TF_CONFIG)."),
    limit_train: int = typer.Option(0, help="Use only the first N training rows (smoke tests)."),
    hide_labels: float = typer.Option(0.0, help="Withhold this fraction of Training labels (for self-train)."),
    ferplus: Optional[Path] = typer.Option(None, help="ferplus_votes.csv (FER2013 row order): soft targets from crowd votes."),
    ferplus_weight: float = typer.Option(0.0, help="Weight of the FER+ vote distribution in the targets (0..1)."),
    teacher: Optional[Path] = typer.Option(None, help="Run or ensemble to distil from (its probabilities, see --teacher-tta)."),
    teacher_tta: str = typer.Option("flip", help="The teacher's test-time augmentation: none | flip | crops."),
    teacher_mode: str = typer.Option("cached", help="cached: the teacher's probabilities on the plain training images, "
                                     "computed once (teacher_probs.npz); live: on each batch as augmented and mixed "
                                     "for the student (consistent teaching), at the cost of a teacher pass per step."),
    distill_weight: float = typer.Option(0.0, help="Weight of the teacher's probabilities in the targets (0..1)."),
    distill_temperature: float = typer.Option(2.0, help="Soften the teacher's probabilities by this temperature."),
    init: Optional[Path] = typer.Option(None, help="Start from this run's best.keras weights and architecture "
                                        "(fine-tuning; the architecture options are ignored)."),
    act_quant: Optional[bool] = typer.Option(None, "--act-quant/--no-act-quant", help="Round activations to int8 "
                                             "while training (quantization-aware fine-tuning, usually with --init of a "
                                             "`fer-train int8-grid` run; default: as --init's run, else off; trains in "
                                             "float32). Export the run's int8-grid copy."),
    swa_start: int = typer.Option(0, help="Average the weights from this epoch (1-based) to the end: swa.keras, "
                                  "batch norm recomputed (stochastic weight averaging; 0 = off)."),
    as_json: bool = typer.Option(False, "--json", help="End with the result as one JSON line instead of a summary."),
) -> None:
    """Fit one model into a run directory (resumable with --resume RUN_DIR)."""
    from fer_train.fit import TrainConfig
    from fer_train.pipeline import AugmentConfig

    with _running():
        if resume is not None:
            from fer_train.config import INPUT_FIELDS

            given = {"data": data, "ferplus": ferplus, "teacher": teacher}  # the options named as INPUT_FIELDS
            moved = {k: str(given[k]) for k in INPUT_FIELDS if given[k] is not None}
            result = _run_fit(resume, None, None, resume=True, moved=moved or None)
        else:
            if data is None or out is None:
                _fail("--data and --out are required (or --resume RUN_DIR)")
            if init is not None:
                from fer_train.config import read_run_config

                mcfg = read_run_config(init)[1]  # RunError if it is not a run
                if act_quant is not None:
                    mcfg = replace(mcfg, act_quant=act_quant)
            else:
                mcfg = _model_config(arch, filters, blocks, convs_per_block, kernel_size, cnn_activation,
                                     cnn_activation_alpha, pool, conv_dropout, units, dense_layers, dnn_activation,
                                     dnn_activation_alpha, dense_dropout, batch_norm, head, match_params,
                                     bool(act_quant))
            tcfg = TrainConfig(data=str(data), val_fraction=val_fraction, random_seed=random_seed,
                               split_seed=split_seed, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                               lr=lr, schedule=schedule, warmup_epochs=warmup_epochs, cycles=cycles,
                               label_smoothing=label_smoothing, class_weights=class_weights, patience=patience,
                               precision=precision, weight_decay=weight_decay, strategy=strategy,
                               limit_train=limit_train, hide_labels=hide_labels,
                               augment=AugmentConfig(enabled=augment, erase=erase, mixup=mixup, cutmix=cutmix),
                               ferplus=str(ferplus or ""), ferplus_weight=ferplus_weight, teacher=str(teacher or ""),
                               distill_weight=distill_weight, distill_temperature=distill_temperature,
                               teacher_tta=teacher_tta, teacher_mode=teacher_mode, init=str(init or ""),
                               swa_start=swa_start)
            tcfg.validate()
            result = _run_fit(out, mcfg, tcfg, resume=False)
    typer.echo(json.dumps(result) if as_json else _fit_summary(result))


@app.command()
def ensemble(
    members: list[Path] = typer.Argument(None, help="Existing runs to gather (omit when training with --like)."),
    out: Path = typer.Option(..., "--out", help="Ensemble directory (ensemble.json lists the members)."),
    like: list[Path] = typer.Option(None, "--like", help="Train members with this run's config (repeatable)."),
    seeds: list[int] = typer.Option(None, "--seed", help="One member per seed and --like config (repeatable)."),
    epochs: Optional[int] = typer.Option(None, help="Override the template's epoch count (a resumed member keeps its own)."),
) -> None:
    """Train N members (configs x seeds, resumable) or gather existing runs into an ensemble."""
    from fer_train.ensemble import train_ensemble, write_ensemble

    if like and members:
        _fail("give member runs to gather or --like RUN to train members, not both")
    if not like and (seeds or epochs is not None):
        _fail("--seed and --epochs apply to members trained with --like")
    with _running():
        if like:
            results = train_ensemble(out, list(like), list(seeds or [1, 2, 3]), epochs,
                                     run_fit=_run_fit)
            typer.echo(json.dumps(results, indent=1))
        elif members:
            typer.echo(str(write_ensemble(out, list(members))))
        else:
            _fail("give member runs to gather, or --like RUN to train members")


@app.command("self-train")
def self_train_cmd(
    teacher: Path = typer.Option(..., "--teacher", help="Supervised run (trained with --hide-labels, or see --unlabelled)."),
    out: Path = typer.Option(..., "--out", help="Directory for the student run and self_training.json."),
    threshold: float = typer.Option(0.8, help="Keep pseudo-labels at or above this confidence."),
    unlabelled: Optional[Path] = typer.Option(None, help="Unlabelled course test.csv (id,feature) instead of hidden Training rows."),
    epochs: Optional[int] = typer.Option(None, help="Override the teacher's epoch count for the student (a resumed student keeps its own)."),
) -> None:
    """Semi-supervised self-training: pseudo-label, retrain, compare with the supervised run."""
    from fer_train.selftrain import self_train

    with _running():
        info = self_train(teacher, out, threshold, unlabelled, epochs, run_fit=_run_fit)
    typer.echo(json.dumps(info, indent=1))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run, ensemble directory or .keras file."),
    split: str = typer.Option("PublicTest", help="PublicTest | PrivateTest | val | Training (or public, private, "
                                                 "validation)"),
    tta: str = typer.Option("none", help="none | flip | crops (image, mirror, five 44x44 crops resized, and their mirrors)"),
    data: Optional[Path] = typer.Option(None, help="Data source (default: the one the run was trained on)."),
    out: Optional[Path] = typer.Option(None, help="Where to write metrics.json and the confusion matrix."),
) -> None:
    """Accuracy, balanced accuracy, per-class P/R/F1 and the confusion matrix (CSV + PNG)."""
    from fer_train.evaluate import evaluate as _evaluate, format_report

    with _running():
        rep = _evaluate(run, split, tta, str(data) if data else None, out)
    typer.echo(format_report(rep))
    typer.echo("wrote " + ", ".join(rep["outputs"]))


@app.command("int8-grid")
def int8_grid(
    member: Path = typer.Argument(..., help="Run folder (its best.keras) or a .keras file inside a run, e.g. RUN/swa.keras."),
    out: Path = typer.Option(..., "--out", help="New run folder for the int8-ready member (must not exist)."),
) -> None:
    """Fold batch norm, drop --act-quant rounding layers, put the kernels (not the logits layer's) on the int8 grid."""
    from fer_train.int8_grid import make_int8_ready

    with _running():
        typer.echo(f"wrote {make_int8_ready(member, out)}; measure it with fer-train evaluate before exporting")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run, ensemble directory or .keras file."),
    test_csv: Path = typer.Argument(..., help="Course test.csv (id,feature)."),
    out: Path = typer.Option(..., "--out", help="Submission CSV (id,label)."),
    tta: str = typer.Option("none", help="none | flip | crops (image, mirror, five 44x44 crops resized, and their mirrors)"),
) -> None:
    """Write the Kaggle submission format (id,label) for a course test.csv."""
    from fer_train.data import load_course_test
    from fer_train.evaluate import write_submission

    with _running():
        typer.echo(str(write_submission(run, load_course_test(test_csv), out, tta)))


def main() -> None:
    run_app(app, "fer-train")


if __name__ == "__main__":
    main()
