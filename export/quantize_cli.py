"""``fer-quantize``: add a static int8 (QDQ) copy of an exported variant to a model directory, if it passes the gate.

TensorFlow is never imported; the data loader (``fer_train.data``) needs only numpy.
"""
from __future__ import annotations

from pathlib import Path

import typer

from fer_export.quantize import MAX_ACCURACY_LOSS, MIN_AGREEMENT
from fer_runtime.exitcodes import PARTIAL, cli_errors, fatal, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
@cli_errors()
def quantize(
    data: Path = typer.Option(..., "--data", help="Kaggle fer2013.csv(.gz): Training for calibration, PublicTest for the gate."),
    model_dir: Path = typer.Option(Path("models"), "--model-dir", help="Exported model folder with manifest.json."),
    source: str = typer.Option("fast", "--source", help="Variant to quantize."),
    target: str = typer.Option("fast-int8", "--target", help="Name of the new variant."),
    calibration_count: int = typer.Option(500, "--calibration-count", min=1, help="Training images for calibration."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration sample."),
    method: str = typer.Option("minmax", "--calibrate-method", help="Activation ranges: minmax, entropy or percentile."),
    min_agreement: float = typer.Option(MIN_AGREEMENT, "--min-agreement", min=0.0, max=1.0,
                                        help="Least argmax agreement with the float graph on PublicTest."),
    max_accuracy_loss: float = typer.Option(MAX_ACCURACY_LOSS, "--max-accuracy-loss", min=0.0,
                                            help="Most PublicTest accuracy (fraction) the int8 graph may lose."),
) -> None:
    """Quantize --source to int8 and add it as --target; exit 1 (writing nothing) if it fails the gate."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fer_export.quantize import QuantizationRefusedError, quantize_variant
    from fer_train.data import DataFormatError, load_source

    console = Console(stderr=True)
    try:
        splits = load_source(data)
        train, test = splits["Training"], splits["PublicTest"]
    except (DataFormatError, KeyError, OSError) as e:
        where = "" if str(data) in str(e) else f"{data}: "
        raise fatal(f"{where}{e} (a Kaggle CSV with Training and PublicTest is needed)") from None
    pick = np.random.default_rng(seed).choice(len(train.x), min(calibration_count, len(train.x)), replace=False)
    report, error = None, None
    try:
        report = quantize_variant(model_dir, train.x[np.sort(pick)], test.x, test.y, source=source, target=target,
                                  min_agreement=min_agreement, max_accuracy_loss=max_accuracy_loss,
                                  calibrate_method=method, log=lambda s: console.print(f"[dim]{s}[/dim]"))
    except QuantizationRefusedError as e:  # a gate refusal: the table, then exit 1 (other errors: cli_errors, exit 2)
        report, error = e.report, str(e)
    table = Table(title=f"{source} -> {target}: {report.eval_images} PublicTest images, "
                        f"{report.calibration_images} calibration images")
    for col in ("check", "value", "limit"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for row in report.rows():
        table.add_row(*row)
    Console().print(table)
    if error is not None:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(PARTIAL)
    typer.echo(f"wrote {report.forward}; variant {target!r} added to {model_dir / 'manifest.json'}")


def main() -> None:
    """Console-script entry point (exit codes: :mod:`fer_runtime.exitcodes`)."""
    run_app(app, "fer-quantize")


if __name__ == "__main__":  # pragma: no cover
    main()
