"""Camera app: live facial expressions from a webcam or a video file, with tracked, smoothed faces.

    python examples/camera_app.py 0                                  # webcam 0, window (q or Esc quits)
    python examples/camera_app.py clip.mp4 --out annotated.mp4       # a file, headless, annotated copy
    python examples/camera_app.py clip.mp4 --out a.avi --model fast --detect-every 5

It shows how to embed ``fer_runtime``: a :class:`~fer_runtime.predictor.Predictor`, a
:class:`~fer_runtime.frames.FrameAnalyzer` fed frame by frame, and :func:`~fer_runtime.annotate.draw_results`.
Without a display (or with ``--headless``) no window is opened.
"""
from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Literal, Optional

import typer

from fer_runtime.choices import DETECTORS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _has_display() -> bool:
    """True if a window can be opened: a display is set and this OpenCV build has GUI support."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    gui = cv2.getBuildInformation().split("GUI:")
    return len(gui) > 1 and "NONE" not in gui[1].split("\n")[0]


@app.command()
def main(
    source: str = typer.Argument(..., help="Webcam index (0, 1, ...) or a video file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the annotated video here (.mp4 .avi .mkv .mov)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model variant (default: the manifest's default)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Exported model folder."),
    detect_every: int = typer.Option(1, "--detect-every", min=1, help="Run face detection on every Nth frame."),
    detector: Literal[DETECTORS] = typer.Option(DETECTORS[0], "--detector",  # type: ignore[valid-type]
                                                help="Face detector: blazeface (ONNX) or haar (OpenCV)."),
    smoothing: float = typer.Option(0.7, "--smoothing", min=0.0, max=0.99, help="EMA weight of the past, 0 = off."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    headless: bool = typer.Option(False, "--headless", help="Never open a window (automatic without a display)."),
) -> None:
    """Analyze SOURCE frame by frame, draw boxes, labels and smoothed probability bars, optionally save the video."""
    import cv2

    from fer_runtime.annotate import draw_results
    from fer_runtime.errors import FerRuntimeError
    from fer_runtime.frames import FrameAnalyzer
    from fer_runtime.predictor import Predictor
    from fer_runtime.video import VideoReader, VideoWriter

    show = not headless and _has_display()
    if not show and out is None:
        typer.echo("note: no window and no --out; only a per-frame summary is printed", err=True)
    try:
        analyzer = FrameAnalyzer(Predictor(model_dir=model_dir, model=model), detect_every=detect_every,
                                 smoothing=smoothing, detector=detector)
        with ExitStack() as stack:
            reader = stack.enter_context(VideoReader(int(source) if source.isdigit() else source))
            writer = stack.enter_context(VideoWriter(out, reader.fps)) if out is not None else None
            n = 0
            for frame in reader:
                results = analyzer.process(frame.image, timestamp=frame.timestamp_ms)
                shown = draw_results(frame.image, results, analyzer.labels)
                if writer is not None:
                    writer.write(shown)
                if show:
                    cv2.imshow("fer camera app", shown)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
                elif out is None:
                    typer.echo(f"frame {frame.index}: " + ", ".join(f"#{r.track} {r.label} {r.confidence:.0%}"
                                                                   for r in results))
                n += 1
                if max_frames is not None and n >= max_frames:
                    break
    except (FerRuntimeError, ValueError) as e:
        typer.echo(f"error: {' '.join(str(e).split())}", err=True)
        raise typer.Exit(2) from None
    if out is not None:
        typer.echo(f"wrote {out} ({n} frames)", err=True)


if __name__ == "__main__":
    app()
