"""``fer-infer``: classify the facial expressions in image files and write one row per face.

Only typer and the standard library are imported at module level so ``--help`` is fast; numpy, OpenCV,
onnxruntime and rich's progress bar are imported inside the command.
"""
from __future__ import annotations

import sys
from enum import Enum
from itertools import chain
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


class Faces(str, Enum):
    auto = "auto"
    detect = "detect"
    crop = "crop"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Format(str, Enum):
    csv = "csv"
    jsonl = "jsonl"


def _fatal(message: str) -> typer.Exit:
    """Print one ``error: ...`` line on stderr; the caller raises the returned Exit(2)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code=2)


@app.command(no_args_is_help=True)
def infer(
    paths: list[str] = typer.Argument(..., show_default=False, metavar="PATH",
                                      help="Image files, folders (searched recursively) or globs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", dir_okay=False,
                                       help="Output file, written atomically. Default: stdout."),
    fmt: Optional[Format] = typer.Option(None, "--format", "-f",
                                         help="Output format. Default: jsonl for .jsonl/.json outputs, else csv."),
    faces: Faces = typer.Option(Faces.auto, "--faces",
                                help="auto: detect faces, else use the whole image; detect: only detected faces; "
                                     "crop: the whole image is one face."),
    saliency_dir: Optional[Path] = typer.Option(None, "--saliency-dir", file_okay=False,
                                                help="Write a PNG per face: original | saliency | focus."),
    device: Device = typer.Option(Device.auto, "--device", help="auto: CUDA if usable, else CPU."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", file_okay=False,
                                             help="Exported model folder. Default: the packaged models "
                                                  "($FER_MODEL_DIR overrides)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model variant from the manifest. Default: its default."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per inference batch."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    every: int = typer.Option(1, "--every", min=1, help="Video: process every Nth frame."),
    detect_every: int = typer.Option(1, "--detect-every", min=1,
                                     help="Video: detect faces on every Nth processed frame; track them in between."),
) -> None:
    """Classify the facial expression of every face in PATH... and write one row per face.

    Columns: path, face, x, y, w, h (the face crop), source (detected | whole), label, confidence, p_<class> per class, error.

    A single video file (.mp4 .avi .mov .mkv .webm .m4v, or anything OpenCV opens as a video) gives one row per face
    per processed frame, with the columns frame, timestamp_ms, track in front (source: detected | tracked).

    Exit status: 0 ok, 1 if any file could not be read, 2 on a fatal error (model missing or corrupt, no inputs).
    """
    from fer_runtime.errors import FerRuntimeError
    from fer_runtime.images import IMAGE_EXTENSIONS
    from fer_runtime.inputs import collect_inputs
    from fer_runtime.results import RowWriter, columns, format_for
    from fer_runtime.video import is_video_file

    videos = [p for p in paths if is_video_file(p)]
    if videos:
        if len(paths) > 1:
            raise _fatal(f"give one video at a time (got {len(paths)} inputs, {len(videos)} of them video)")
        if saliency_dir is not None or faces == Faces.crop:
            raise _fatal("--saliency-dir and --faces crop are for images, not video")
        _infer_video(Path(videos[0]), out, fmt, device, model_dir, model, batch_size, threads, quiet, every,
                     detect_every)
        return

    files, missing = collect_inputs(paths)
    if saliency_dir is not None:  # never feed our own figures back in on a re-run
        sal_root = saliency_dir.resolve()
        files = [f for f in files if not f.resolve().is_relative_to(sal_root)]
    if not files:
        if missing:
            raise _fatal(f"no such file or directory: {', '.join(missing)}")
        raise _fatal(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(paths)}")
    if out is not None and not out.parent.is_dir():
        raise _fatal(f"output folder {out.parent} does not exist")
    if out is not None and out.is_dir():
        raise _fatal(f"--out {out} is a folder")
    if saliency_dir is not None:
        try:
            saliency_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _fatal(f"cannot create --saliency-dir {saliency_dir}: {e.strerror or e}") from None

    from fer_runtime.pipeline import Row, error_row, infer_files
    from fer_runtime.predictor import Predictor

    try:
        predictor = Predictor(model_dir=model_dir, model=model, device=device.value, batch_size=batch_size,
                              threads=threads)
        if saliency_dir is not None:
            predictor.load_saliency()
    except (FerRuntimeError, ValueError) as e:
        raise _fatal(str(e)) from None

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    n_rows = n_faces = n_failed = 0
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    missing_rows: list[Row] = [error_row(m, "no such file or directory") for m in missing]
    try:
        with progress, RowWriter(out, format_for(out, fmt.value if fmt else None), columns(predictor.labels)) as w:
            task = progress.add_task("fer-infer", total=len(files))
            results = infer_files(predictor, files, faces=faces.value, saliency_dir=saliency_dir,
                                  on_file=lambda _: progress.advance(task))
            for row in chain(missing_rows, results):
                w.write(row.fields)
                n_rows += 1
                n_failed += row.failed
                n_faces += row.fields.get("label") is not None
    except OSError as e:
        raise _fatal(f"cannot write {out}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    if not quiet:
        where = out if out is not None else "stdout"
        console.print(f"{n_faces} face(s) from {len(files)} file(s), {n_failed} failed "
                      f"-> {where} ({n_rows} rows, {', '.join(predictor.providers)})", highlight=False, soft_wrap=True)
    if n_failed:
        raise typer.Exit(code=1)


def _infer_video(path: Path, out: Optional[Path], fmt: Optional[Format], device: Device, model_dir: Optional[Path],
                 model: Optional[str], batch_size: int, threads: Optional[int], quiet: bool, every: int,
                 detect_every: int) -> None:
    """The video branch of :func:`infer`: one row per face per processed frame."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fer_runtime.errors import FerRuntimeError
    from fer_runtime.frames import FrameAnalyzer
    from fer_runtime.pipeline import infer_video
    from fer_runtime.predictor import Predictor
    from fer_runtime.results import RowWriter, format_for, video_columns
    from fer_runtime.video import VideoReader

    if out is not None and (not out.parent.is_dir() or out.is_dir()):
        raise _fatal(f"--out {out}: {'is a folder' if out.is_dir() else f'folder {out.parent} does not exist'}")
    try:
        predictor = Predictor(model_dir=model_dir, model=model, device=device.value, batch_size=batch_size,
                              threads=threads)
        with VideoReader(path) as probe:  # fail before the output exists, and size the progress bar
            total = probe.frame_count
        analyzer = FrameAnalyzer(predictor, detect_every=detect_every)
    except (FerRuntimeError, ValueError) as e:
        raise _fatal(str(e)) from None
    console = Console(stderr=True)
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    n_rows = n_frames = 0
    try:
        with progress, RowWriter(out, format_for(out, fmt.value if fmt else None), video_columns(predictor.labels)) as w:
            task = progress.add_task(f"fer-infer {path.name}", total=total)
            for row in infer_video(analyzer, path, every=every,
                                   on_frame=lambda f: progress.update(task, completed=min(f.index + 1, total or f.index + 1))):
                w.write(row.fields)
                n_rows += 1
            n_frames = analyzer.frames_processed
            progress.update(task, completed=total or n_frames)
    except FerRuntimeError as e:
        raise _fatal(str(e)) from None
    except OSError as e:
        raise _fatal(f"cannot write {out}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    if not quiet:
        console.print(f"{n_rows} face row(s) from {n_frames} processed frame(s) of {path} -> "
                      f"{out if out is not None else 'stdout'} ({', '.join(predictor.providers)})",
                      highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fer-infer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
