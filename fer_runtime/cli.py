"""``fer-infer``: classify the facial expressions in image files and write one row per face.

Only typer and the standard library are imported at module level so ``--help`` is fast; numpy, OpenCV,
onnxruntime and rich's progress bar are imported inside the command.
"""
from __future__ import annotations

import os
import sys
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

from fer_runtime.choices import (DEFAULT_MAX_PIXELS, DETECTORS, DEVICES, FACE_CROP_MAX_SIDE, FACE_MODES, FORMATS,
                                 JSONL_SUFFIXES)
from fer_runtime.exitcodes import PARTIAL, cli_errors, fatal, run_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


# Option types built from the choice tuples (typer checks the value and lists them in --help).
Faces = Literal[FACE_MODES]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
Format = Literal[FORMATS]  # type: ignore[valid-type]
Detector = Literal[DETECTORS]  # type: ignore[valid-type]


@app.command(no_args_is_help=True)
@cli_errors()
def infer(
    paths: list[str] = typer.Argument(..., show_default=False, metavar="PATH",
                                      help="Image files, folders (searched recursively; hidden files and "
                                           "folders skipped) or globs."),
    out_text: Optional[str] = typer.Option(None, "--out", "-o",
                                           help="Output file, written atomically (missing folders are created). "
                                                "Default: stdout. With --ray, a folder X.parquet or X/ (a trailing "
                                                "slash) gets a Parquet dataset written by the workers."),
    fmt: Optional[Format] = typer.Option(None, "--format", "-f",
                                         help=f"Output format. Default: jsonl for {'/'.join(JSONL_SUFFIXES)} outputs, else "
                                              "csv."),
    faces: Faces = typer.Option("auto", "--faces",
                                help=f"auto: an image up to {FACE_CROP_MAX_SIDE} px is one face, in a larger one the "
                                     "detected faces (none found: "
                                     "a row with source 'none' and no label); detect: only detected faces; "
                                     "crop: the whole image is one face."),
    detector: Detector = typer.Option(DETECTORS[0], "--detector",
                                      help="Face detector: blazeface (ONNX, in the model folder) or haar (OpenCV)."),
    saliency_dir: Optional[Path] = typer.Option(None, "--saliency-dir", file_okay=False,
                                                help="Write a PNG per face: original | saliency | focus."),
    device: Device = typer.Option("auto", "--device", help="auto: CUDA if usable, else CPU."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", file_okay=False,
                                             help="Exported model folder. Default: the packaged models "
                                                  "($FER_MODEL_DIR overrides)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model variant from the manifest. Default: its default."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per inference batch."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Let OpenCV and the image codecs (libpng, libjpeg) print their own messages."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue an interrupted run with the same inputs and --out after its last "
                                     "complete row (a killed run leaves OUT.partial and OUT.progress.json)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=0,
                                             help="Refuse images whose header declares more pixels, before decoding "
                                                  f"them. Default: Pillow's decompression-bomb limit, {DEFAULT_MAX_PIXELS} "
                                                  f"(about {DEFAULT_MAX_PIXELS / 1e6:.0f} MP); 0: no limit."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                              help="Run on Ray Data: local (start Ray on this machine), auto (the "
                                                   "cluster running here) or a cluster address (ray://host:10001). "
                                                   "Inputs may then also be pyarrow URIs (s3://, gs://). Needs the "
                                                   "ray extra."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="With --ray: inference actors (one CPU each). Default: the cores "
                                               "here with --ray local, else the cluster's CPUs minus one."),
    every: int = typer.Option(1, "--every", min=1, help="Video: process every Nth frame."),
    detect_every: int = typer.Option(1, "--detect-every", min=1,
                                     help="Video: detect faces on every Nth processed frame; track them in between."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda v: _print_version(v),
                                 help="Print fer-infer's version and exit."),
) -> None:
    """Classify the facial expression of every face in PATH... and write one row per face.

    Columns: path, face, x, y, w, h (the face crop), source (detected | whole | none), score (detection), label,
    confidence, p_<class> per class, saliency_png (the face's --saliency-dir figure), error.

    A single video file (.mp4 .avi .mov .mkv .webm .m4v, or anything OpenCV opens as a video) gives one row per face
    per processed frame, with the columns frame, timestamp_ms, track in front (source: detected | tracked).

    Exit status: 0 ok, 1 if any file could not be read, 2 on a fatal error (model missing or corrupt, no inputs),
    130 interrupted, 141 stdout closed by its reader.
    """
    from fer_runtime.inputs import collect_inputs, exclude_under
    from fer_runtime.results import format_for
    from fer_runtime.video import is_video_file

    out = Path(out_text) if out_text is not None else None  # the text keeps a trailing slash, which Path drops
    videos = [p for p in paths if is_video_file(p)]
    if videos:
        if len(paths) > 1:
            raise fatal(f"give one video at a time (got {len(paths)} inputs, {len(videos)} of them video)")
        if saliency_dir is not None or faces == "crop":
            raise fatal("--saliency-dir and --faces crop are for images, not video")
        if resume:
            raise fatal("--resume is for image runs with --out, not video")
        if ray_address is not None or workers is not None:
            raise fatal("--ray and --workers are for images; a video runs in this process")
        _infer_video(Path(videos[0]), out, fmt, device, model_dir, model, batch_size, threads, quiet, every,
                     detect_every, detector)
        return
    if ray_address is not None:
        if saliency_dir is not None:
            raise fatal("--saliency-dir is not supported with --ray")
        _infer_ray(paths, out_text, fmt, ray_address, workers, resume, quiet,
                   dict(model_dir=model_dir, model=model, batch_size=batch_size),
                   dict(device=device, threads=threads, faces=faces, max_pixels=_pixel_limit(max_pixels),
                        detector=detector))
        return
    if workers is not None:
        raise fatal("--workers needs --ray")

    files, missing = collect_inputs(paths)
    if saliency_dir is not None:  # never feed our own figures back in on a re-run
        files = exclude_under(files, saliency_dir)
    if not files:
        raise _no_inputs(paths, missing)
    _make_out_folder(out)
    if out is not None and out.is_dir():
        raise fatal(f"--out {out} is a folder")
    if resume and out is None:
        raise fatal("--resume needs --out FILE (stdout cannot be continued)")
    if saliency_dir is not None:
        try:
            saliency_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fatal(f"cannot create --saliency-dir {saliency_dir}: {e.strerror or e}") from None

    predictor = _load_model(dict(model_dir=model_dir, model=model, device=device, batch_size=batch_size,
                                 threads=threads), faces, detector, saliency=saliency_dir is not None)
    console, progress = _progress(quiet)
    limit = _pixel_limit(max_pixels)
    try:
        with progress:
            task = progress.add_task("fer-infer", total=len(files))
            n_rows, n_faces, n_failed = _write_image_rows(
                out, format_for(out, fmt), predictor, files, missing, resume, lambda n: progress.advance(task, n),
                faces=faces, saliency_dir=saliency_dir, max_pixels=limit, quiet=not verbose, detector=detector,
                saliency_inputs=files)
    except BrokenPipeError:
        raise  # cli_errors: exit 141, quietly
    except OSError as e:
        raise fatal(f"cannot write {out if out is not None else 'stdout'}: {e.strerror or e}") from None
    if not quiet:
        where = out if out is not None else "stdout"
        console.print(f"{n_faces} face(s) from {len(files)} file(s), {n_failed} failed "
                      f"-> {where} ({n_rows} rows, {', '.join(predictor.providers)})", highlight=False, soft_wrap=True)
    if n_failed:
        raise typer.Exit(code=PARTIAL)


def _print_version(value: bool) -> None:
    """``--version``: print the version and stop before the arguments are checked."""
    if value:
        from fer_runtime import __version__

        typer.echo(f"fer-infer {__version__}")
        raise typer.Exit()


def _no_inputs(paths: list[str], missing: list[str]) -> typer.Exit:
    """The fatal error for inputs that hold no image file: what was missing, or what was searched (and where a
    folder holds videos, that a video is passed by its own path)."""
    from fer_runtime.images import IMAGE_EXTENSIONS
    from fer_runtime.inputs import videos_in
    from fer_runtime.pipeline import NO_SUCH_FILE

    if missing:
        return fatal(f"{NO_SUCH_FILE}: {', '.join(missing)}")
    message = f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(paths)}"
    videos = videos_in(paths)
    if videos:
        message += (f"; folders are searched for images only, a video is passed directly: fer-infer {videos[0]}"
                    + (f" ({len(videos)} videos found)" if len(videos) > 1 else ""))
    return fatal(message)


def _load_model(predictor_options: dict[str, Any], faces: str, detector: str, saliency: bool = False) -> Any:
    """The Predictor, and the detector (unless ``faces`` is "crop") and saliency graph it will need, verified and
    loaded before any output exists; a bad model or setting becomes one line and exit 2."""
    from fer_runtime.errors import FerRuntimeError
    from fer_runtime.predictor import Predictor

    try:
        predictor = Predictor(**predictor_options)
        if saliency:
            predictor.load_saliency()
        if faces != "crop":
            from fer_runtime.detectors import get_detector

            get_detector(detector, predictor.model_dir)
    except (FerRuntimeError, ValueError) as e:
        raise fatal(str(e)) from None
    return predictor


def _progress(quiet: bool) -> tuple[Any, Any]:
    """(stderr console, rich progress bar) for a run; the bar is off with ``quiet``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return console, Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(), console=console, disable=quiet,
                             transient=False)


def _make_out_folder(out: Optional[Path]) -> None:
    """Create the folder of ``--out`` if it is missing, as ``--saliency-dir`` is created."""
    if out is None or out.parent.is_dir():
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fatal(f"cannot create the folder of --out {out}: {e.strerror or e}") from None


def _pixel_limit(max_pixels: int | None) -> int | None:
    """The --max-pixels value as read_image's ``max_pixels``: the default when not given, None (no limit) for 0."""
    return DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None)


def _write_image_rows(out: Optional[Path], fmt: str, predictor: Any, files: list[Path], missing: list[str],
                      resume: bool, advance: Callable[[int], None], chunks: Optional[Callable[..., Any]] = None,
                      **options: Any) -> tuple[int, int, int]:
    """Write the rows of ``missing`` then ``files``; return (rows, faces, failed files), earlier runs included.

    stdout gets a plain stream; a file is written through :class:`fer_runtime.resume.ResumableWriter`, committed
    after each chunk of complete files, so a killed run can be continued with ``--resume``. ``chunks`` computes
    the rows (default :func:`fer_runtime.pipeline.infer_chunks`; ``--ray`` passes
    :func:`fer_runtime.distributed.ray_chunks`).
    """
    from fer_runtime.pipeline import NO_SUCH_FILE, error_row, infer_chunks
    from fer_runtime.results import RowWriter, columns
    from fer_runtime.resume import ResumableWriter, run_settings

    chunks = chunks or infer_chunks
    cols = columns(predictor.labels)
    missing_rows = [error_row(m, NO_SUCH_FILE) for m in missing]
    if out is None:
        n_rows = n_faces = n_failed = 0
        with RowWriter(None, fmt, cols) as w:
            computed = (row for rows, _ in chunks(predictor, files, on_file=lambda _: advance(1), **options)
                        for row in rows)
            for row in chain(missing_rows, computed):
                w.write(row.fields)
                n_rows, n_faces, n_failed = n_rows + 1, n_faces + row.has_face, n_failed + row.failed
        return n_rows, n_faces, n_failed

    settings = {**run_settings(predictor, faces=options["faces"], detector=options["detector"],
                               max_pixels=options["max_pixels"]),
                "saliency_dir": None if options.get("saliency_dir") is None else str(options["saliency_dir"])}
    with ResumableWriter(out, fmt, cols, [*missing, *map(str, files)], settings, resume=resume) as w:
        skip = w.inputs_done
        for row in missing_rows[skip:]:
            w.write(row.fields, row.failed)
        if skip < len(missing):
            w.commit(len(missing))
        base = max(skip, len(missing))
        advance(base - len(missing))
        for rows, done in chunks(predictor, files[base - len(missing):], on_file=lambda _: advance(1), **options):
            for row in rows:
                w.write(row.fields, row.failed)
            w.commit(base + done)
    return w.state.rows, w.state.faces, w.state.failed


def _infer_ray(paths: list[str], out_text: Optional[str], fmt: Optional[str], address: str, workers: Optional[int],
               resume: bool, quiet: bool, model_options: dict[str, Any], run_options: dict[str, Any]) -> None:
    """The ``--ray`` branch of :func:`infer`: the same rows, computed by Ray Data actors
    (:mod:`fer_runtime.distributed`); CSV/JSONL/stdout are streamed to this process in input order, a Parquet
    folder is written by the workers."""
    from functools import partial

    from fer_runtime import distributed as dist
    from fer_runtime.results import format_for

    files, missing = dist.expand_inputs(paths)
    if not files:
        raise _no_inputs(paths, missing)
    out = Path(out_text) if out_text is not None else None
    parquet = out_text is not None and dist.is_parquet_out(out_text)
    _make_out_folder(out)
    if out is not None and not parquet and out.is_dir():
        raise fatal(f"--out {out} is a folder (a Parquet output folder is named X.parquet)")
    if resume and out is None:
        raise fatal("--resume needs --out FILE (stdout cannot be continued)")
    # The driver's predictor verifies the model before Ray starts and names it; each worker builds its own.
    predictor = _load_model(dict(model_options, device="cpu", threads=1), run_options["faces"],
                            run_options["detector"])
    # A local Ray gets one logical CPU more than the workers hold, for Ray Data's own tasks (the Parquet writes).
    local_workers = workers or os.cpu_count() or 1
    started = dist.connect(address, num_cpus=local_workers + 1 if address == "local" else None)
    try:
        import ray

        n = local_workers if address == "local" else workers or max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(), console=console, disable=quiet)
        if parquet:
            assert out is not None
            if not quiet:
                console.print(f"fer-infer: {len(files)} file(s) on {n} Ray worker(s) -> {out}/", highlight=False)
            dist.predict_to_parquet(predictor, [str(f) for f in files], missing, out, resume, workers=n,
                                    **run_options)
            n_rows, n_faces, n_failed = dist.parquet_counts(out)
        else:
            with progress:
                task = progress.add_task(f"fer-infer on {n} Ray worker(s)", total=len(files))
                chunks = partial(dist.ray_chunks, workers=n, device=run_options["device"],
                                 threads=run_options["threads"])
                n_rows, n_faces, n_failed = _write_image_rows(
                    out, format_for(out, fmt), predictor, files, missing, resume,
                    lambda k: progress.advance(task, k), chunks=chunks, faces=run_options["faces"],
                    max_pixels=run_options["max_pixels"], detector=run_options["detector"])
    except BrokenPipeError:
        raise  # cli_errors: exit 141, quietly
    finally:
        if started:
            ray.shutdown()
    if not quiet:
        console.print(f"{n_faces} face(s) from {len(files)} file(s), {n_failed} failed -> "
                      f"{out if out is not None else 'stdout'} ({n_rows} rows, Ray, {n} worker(s))",
                      highlight=False, soft_wrap=True)
    if n_failed:
        raise typer.Exit(code=PARTIAL)


def _infer_video(path: Path, out: Optional[Path], fmt: Optional[Format], device: Device, model_dir: Optional[Path],
                 model: Optional[str], batch_size: int, threads: Optional[int], quiet: bool, every: int,
                 detect_every: int, detector: str = DETECTORS[0]) -> None:
    """The video branch of :func:`infer`: one row per face per processed frame."""
    from fer_runtime.errors import FerRuntimeError
    from fer_runtime.frames import FrameAnalyzer
    from fer_runtime.pipeline import infer_video
    from fer_runtime.results import RowWriter, format_for, video_columns
    from fer_runtime.video import VideoReader

    _make_out_folder(out)
    if out is not None and out.is_dir():
        raise fatal(f"--out {out} is a folder")
    predictor = _load_model(dict(model_dir=model_dir, model=model, device=device, batch_size=batch_size,
                                 threads=threads), "crop", detector)  # the FrameAnalyzer loads the detector
    try:
        with VideoReader(path) as probe:  # fail before the output exists, and size the progress bar
            total = probe.frame_count
        analyzer = FrameAnalyzer(predictor, detect_every=detect_every, detector=detector)
    except (FerRuntimeError, ValueError) as e:
        raise fatal(str(e)) from None
    console, progress = _progress(quiet)
    n_rows = n_frames = 0
    try:
        with progress, RowWriter(out, format_for(out, fmt), video_columns(predictor.labels)) as w:
            task = progress.add_task(f"fer-infer {path.name}", total=total)
            for row in infer_video(analyzer, path, every=every,
                                   on_frame=lambda f: progress.update(task, completed=min(f.index + 1, total or f.index + 1))):
                w.write(row.fields)
                n_rows += 1
            n_frames = analyzer.frames_processed
            progress.update(task, completed=total or n_frames)
    except FerRuntimeError as e:
        raise fatal(str(e)) from None
    except BrokenPipeError:
        raise  # cli_errors: exit 141, quietly
    except OSError as e:
        raise fatal(f"cannot write {out if out is not None else 'stdout'}: {e.strerror or e}") from None
    if not quiet:
        console.print(f"{n_rows} face row(s) from {n_frames} processed frame(s) of {path} -> "
                      f"{out if out is not None else 'stdout'} ({', '.join(predictor.providers)})",
                      highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point (exit codes: :mod:`fer_runtime.exitcodes`)."""
    run_app(app, "fer-infer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
