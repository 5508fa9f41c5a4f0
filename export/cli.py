"""``fer-export``: Keras runs/ensembles -> verified ONNX forward + saliency graphs and manifest.json.

TensorFlow is imported inside the command, so ``fer-export --help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fer_runtime.exitcodes import cli_errors, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Export Keras FER2013 models (a run, an ensemble, or .keras files) to verified ONNX graphs.")


def _temperature(text: str) -> float | str:
    """``--temperature``: 'auto' or a number (its range is checked by the exporter)."""
    from fer_export.errors import ExportError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ExportError(f"temperature must be a positive number or 'auto', got {text!r}") from None


@app.command()
def export(
    sources: List[Path] = typer.Argument(..., metavar="RUN_OR_ENSEMBLE...",
                                         help="Run directories, ensemble directories or .keras files; all become one ensemble."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (e.g. models/); an existing manifest is merged."),
    variant: str = typer.Option("accurate", help="Variant name in the manifest; 'accurate' writes fer_ensemble.onnx."),
    opset: int = typer.Option(17, help="ONNX opset (13..18; tf2onnx refuses 19+)."),
    temperature: str = typer.Option("1.0", help="Divide member logits by this before the softmax (calibration); "
                                                "'auto' fits it on the PublicTest split of --verify-data."),
    tta: str = typer.Option("none", help="Test-time augmentation inside the graph: none, flip, or crops "
                                                "(12 views: image, five 44x44 crops resized to 48, each with its mirror)."),
    verify_data: Optional[Path] = typer.Option(None, help="Data for verification (and PublicTest accuracy if it is a "
                                                         "Kaggle CSV); default: the repo's test fixture."),
    verify_count: int = typer.Option(200, help="At most this many real images for the numeric verification."),
    description: str = typer.Option("", help="Variant description for the manifest (default: generated)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show TensorFlow's own start-up messages."),
) -> None:
    """Export RUN_OR_ENSEMBLE... as one ensemble into --out, verify it, and print the checks."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    with cli_errors():
        from fer_train.tf_env import import_tensorflow

        import_tensorflow(verbose).get_logger().setLevel("ERROR")
        from fer_export.exporter import export_models

        res = export_models(sources, out, variant=variant, opset=opset, temperature=_temperature(temperature), tta=tta,
                            verify_data=verify_data, verify_count=verify_count, description=description,
                            log=lambda s: console.print(f"[dim]{s}[/dim]"))
    rep = res.report
    table = Table(title=f"verification: {rep.source} ({rep.images} images)")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    for row in rep.rows():
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)
    v = res.manifest.variants[res.variant]
    if v.calibration:
        c = v.calibration
        typer.echo(f"temperature {c.temperature:.4f} fitted on {c.fitted_on} ({c.images} images, TTA {v.tta}): "
                   f"NLL {c.nll_before:.4f} -> {c.nll_after:.4f}, ECE {c.ece_before:.4f} -> {c.ece_after:.4f}")
    for m in v.members:
        acc = m.public_test_accuracy
        typer.echo(f"member {m.name}: {m.params} params, PublicTest accuracy "
                   f"{'unknown' if acc is None else f'{acc:.4f}'} ({m.accuracy_from})")
    for p in (res.forward, res.saliency, res.weights, res.manifest_path):
        typer.echo(f"wrote {p}")


def main() -> None:
    """Console-script entry point."""
    run_app(app, "fer-export")


if __name__ == "__main__":
    main()
