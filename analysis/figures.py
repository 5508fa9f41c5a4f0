"""The figure conventions of the analysis suite: image grids, captions, titles, compact PNGs.

Figures use matplotlib (Agg) and are saved atomically through :func:`fer_train.plots.save_figure`.
Image grids use a fixed panel size, so a figure's pixel size follows from its grid:
:func:`grid_pixels` gives the expected (width, height) before ``bbox_inches="tight"`` trims margins.
Each analysis draws its own figures in its module with these helpers.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from fer_runtime.atomic import atomic_write
from fer_train.plots import pyplot, save_figure

PANEL = 1.5  # inches per image panel
CAPTION = 0.3  # inches of caption above each panel row
DPI = 90
SMALL = 7  # font size of panel captions
HEADER = 0.65  # inches above the first row, for the figure title

__all__ = ["PANEL", "CAPTION", "DPI", "SMALL", "HEADER", "pyplot", "grid_pixels", "grid_cols", "grid", "compact_png",
           "save", "suptitle", "gray", "plot_image_grid"]


def grid_pixels(rows: int, cols: int, panel: float = PANEL, caption: float = CAPTION, dpi: int = DPI,
                header: float = HEADER) -> tuple[int, int]:
    """Nominal (width, height) in pixels of an image grid figure (before tight cropping)."""
    return round(cols * panel * dpi), round((rows * (panel + caption) + header) * dpi)


def grid_cols(n: int) -> int:
    """Columns of a grid of ``n`` small panels (filters, feature maps)."""
    return min(n, 16 if n >= 64 else 8)


def grid(rows: int, cols: int, panel: float = PANEL, caption: float = CAPTION, header: float = HEADER):
    """A figure of ``rows`` x ``cols`` axes without ticks, sized by the panel conventions: (fig, axes[rows, cols])."""
    plt = pyplot()
    w, h = cols * panel, rows * (panel + caption) + header
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - header / h, wspace=0.05,
                        hspace=caption / panel + 0.05)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def compact_png(path: Path) -> Path:
    """Re-encode a PNG as a 256-colour palette PNG (atomically) if that is smaller.

    The report embeds every figure (base64) and is committed with them, so size matters; the
    palette keeps the figures visually the same at about half the bytes.
    """
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    small.save(buf, "PNG", optimize=True)
    if buf.tell() < path.stat().st_size:
        atomic_write(path, buf.getvalue())
    return path


def save(fig, path: Path) -> Path:
    """Save ``fig`` at the suite's DPI, compacted, and close it."""
    return compact_png(save_figure(fig, path, dpi=DPI))


def suptitle(fig, title: str, fontsize: int = 9) -> None:
    """A figure title wrapped to the figure's width (so tight cropping never has to widen the figure)."""
    chars = max(20, int(fig.get_figwidth() * 72 / (fontsize * 0.6)))
    fig.suptitle(textwrap.fill(title, chars), fontsize=fontsize, y=1 - 0.06 / fig.get_figheight(), va="top")


def gray(ax, img: np.ndarray, title: str = "", vmin: float = 0, vmax: float = 255, fontsize: int = SMALL) -> None:
    """Draw a gray image (0..255 by default) on ``ax`` with an optional caption."""
    ax.imshow(np.asarray(img).reshape(img.shape[0], img.shape[1]), cmap="gray", vmin=vmin, vmax=vmax,
              interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize, pad=2)


def plot_image_grid(images: np.ndarray, captions: Sequence[str], cols: int, title: str, path: Path,
                    panel: float = PANEL, per_image_range: bool = True, cmap: str = "gray") -> Path:
    """A grid of images with a caption each; each image stretched to its own range by default."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = grid(rows, cols, panel=panel, caption=CAPTION * min(1.0, panel / PANEL + 0.2))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            continue
        im = np.asarray(images[i], np.float32)
        lo, hi = (float(im.min()), float(im.max())) if per_image_range else (0.0, 255.0)
        ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(captions[i], fontsize=6 if panel < 1.2 else SMALL, pad=1.5)
    suptitle(fig, title)
    return save(fig, path)
