"""``fer-train``: fit, ensemble, self-train, evaluate and predict (TensorFlow is imported lazily)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and evaluate FER2013 Keras models (CNN family, DNN baseline, ensembles).")


@app.callback()
def _root() -> None:
    """Train and evaluate FER2013 Keras models."""


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def _errors():
    """Exceptions that are the user's input being wrong: one line, non-zero exit."""
    from fer_train.data import DataFormatError
    from fer_train.runs import RunError

    return (DataFormatError, RunError, ValueError, KeyError, FileNotFoundError)


def _progress():
    """A rich progress bar over epochs x steps, plus a printer that keeps per-epoch lines visible."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
                   disable=not console.is_terminal)
    return bar, console


def _run_fit(run: Path, model_cfg, train_cfg, resume: bool, source=None, extra_train=None) -> dict:
    from fer_train.fit import fit

    bar, console = _progress()
    tasks: dict[int, int] = {}

    def progress(epoch: int, step: int, steps: int) -> None:
        if epoch not in tasks:
            tasks[epoch] = bar.add_task(f"epoch {epoch + 1}", total=steps)
        bar.update(tasks[epoch], completed=step)

    with bar:
        return fit(run, model_cfg, train_cfg, resume=resume, source=source, extra_train=extra_train,
                   log=lambda s: console.print(s, highlight=False, soft_wrap=True), progress=progress)


def _model_config(arch, filters, blocks, convs_per_block, kernel_size, cnn_activation, cnn_activation_alpha, pool,
                  conv_dropout, units, dense_layers, dnn_activation, dnn_activation_alpha, dense_dropout, batch_norm,
                  head, match_params):
    from fer_train.models import ModelConfig, match_dnn_units

    cfg = ModelConfig(arch=arch, filters=filters, blocks=blocks, convs_per_block=convs_per_block,
                      kernel_size=kernel_size, cnn_activation=cnn_activation,
                      cnn_activation_alpha=cnn_activation_alpha, pool=pool, conv_dropout=conv_dropout, units=units,
                      dense_layers=dense_layers, dnn_activation=dnn_activation,
                      dnn_activation_alpha=dnn_activation_alpha, dense_dropout=dense_dropout, batch_norm=batch_norm,
                      head=head)
    if match_params:
        target = _target_params(match_params)
        if arch != "dnn":
            raise ValueError("--match-params sizes the DNN baseline; use it with --arch dnn")
        cfg.units = match_dnn_units(target, cfg)
    cfg.validate()
    return cfg


def _target_params(spec: str) -> int:
    """Parameter count of a run directory, a config.json, or a plain integer."""
    from fer_train import runs
    from fer_train.models import ModelConfig, build_model

    if spec.isdigit():
        return int(spec)
    p = Path(spec)
    conf = runs.read_json(p / runs.CONFIG if p.is_dir() else p)
    return int(build_model(ModelConfig.from_dict(conf["model"])).count_params())


@app.command()
def fit(
    data: Path = typer.Option(None, "--data", help="fer2013.csv(.gz), course train.csv, or a folder of class folders."),
    out: Path = typer.Option(None, "--out", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    arch: str = typer.Option("cnn", help="cnn | compact | dnn"),
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
    label_smoothing: float = typer.Option(0.0),
    class_weights: bool = typer.Option(False, "--class-weights/--no-class-weights"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    patience: int = typer.Option(15, help="Early stopping patience in epochs (on validation accuracy)."),
    validate: float = typer.Option(0.1, help="Validation fraction when the data has no Usage column."),
    random_seed: int = typer.Option(1234),
    mixed_precision: bool = typer.Option(False, "--mixed-precision"),
    strategy: str = typer.Option("default", help="default | mirrored"),
    limit_train: int = typer.Option(0, help="Use only the first N training rows (smoke tests)."),
) -> None:
    """Fit one model into a run directory (resumable with --resume RUN_DIR)."""
    from fer_train.fit import TrainConfig
    from fer_train.pipeline import AugmentConfig

    try:
        if resume is not None:
            result = _run_fit(resume, None, None, resume=True)
        else:
            if data is None or out is None:
                _fail("--data and --out are required (or --resume RUN_DIR)")
            mcfg = _model_config(arch, filters, blocks, convs_per_block, kernel_size, cnn_activation,
                                 cnn_activation_alpha, pool, conv_dropout, units, dense_layers, dnn_activation,
                                 dnn_activation_alpha, dense_dropout, batch_norm, head, match_params)
            tcfg = TrainConfig(data=str(data), validate=validate, random_seed=random_seed, epochs=epochs,
                               batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule,
                               warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                               class_weights=class_weights, patience=patience, mixed_precision=mixed_precision,
                               strategy=strategy, limit_train=limit_train, augment=AugmentConfig(enabled=augment))
            tcfg.validate_choices()
            result = _run_fit(out, mcfg, tcfg, resume=False)
    except _errors() as e:
        _fail(str(e).strip("'\""))
    typer.echo(json.dumps(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
