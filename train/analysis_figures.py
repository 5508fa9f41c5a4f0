"""Matplotlib figures of the analysis suite (Agg, saved atomically through :func:`fer_train.plots.save_figure`).

Image grids use a fixed panel size, so a figure's pixel size follows from its grid:
:func:`grid_pixels` gives the expected (width, height) before ``bbox_inches="tight"`` trims margins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fer_runtime.labels import LABELS
from fer_train import runs
from fer_train.plots import _plt, save_figure

PANEL = 1.5  # inches per image panel
CAPTION = 0.3  # inches of caption above each panel row
DPI = 90
SMALL = 7  # font size of panel captions
HEADER = 0.65  # inches above the first row, for the figure title


def grid_pixels(rows: int, cols: int, panel: float = PANEL, caption: float = CAPTION, dpi: int = DPI,
                header: float = HEADER) -> tuple[int, int]:
    """Nominal (width, height) in pixels of an image grid figure (before tight cropping)."""
    return round(cols * panel * dpi), round((rows * (panel + caption) + header) * dpi)


def _grid(rows: int, cols: int, panel: float = PANEL, caption: float = CAPTION, header: float = HEADER):
    plt = _plt()
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
    import io

    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    small.save(buf, "PNG", optimize=True)
    if buf.tell() < path.stat().st_size:
        runs.atomic_write_bytes(path, buf.getvalue())
    return path


def _save(fig, path: Path) -> Path:
    return compact_png(save_figure(fig, path, dpi=DPI))


def _suptitle(fig, title: str, fontsize: int = 9) -> None:
    """A figure title wrapped to the figure's width (so tight cropping never has to widen the figure)."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / (fontsize * 0.6)))
    fig.suptitle(textwrap.fill(title, chars), fontsize=fontsize, y=1 - 0.06 / fig.get_figheight(), va="top")


def _gray(ax, img: np.ndarray, title: str = "", vmin: float = 0, vmax: float = 255, fontsize: int = SMALL) -> None:
    ax.imshow(np.asarray(img).reshape(img.shape[0], img.shape[1]), cmap="gray", vmin=vmin, vmax=vmax,
              interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize, pad=2)


def plot_confused_pairs(pairs: Sequence[dict], title: str, path: Path) -> Path:
    """Horizontal bars of the most-confused (true -> predicted) pairs and their row-normalised rates."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * max(len(pairs), 1) + 1.1))
    names = [f"{p['true']} \u2192 {p['predicted']}" for p in pairs][::-1]
    rates = [p["rate"] for p in pairs][::-1]
    bars = ax.barh(names, rates, color="#d9534f")
    for b, p in zip(bars, pairs[::-1]):
        ax.text(b.get_width() + 0.005, b.get_y() + b.get_height() / 2, f"{p['rate']:.1%} ({p['count']}/{p['support']})",
                va="center", fontsize=8)
    ax.set_xlim(0, max(rates + [0.05]) * 1.35)
    ax.set_xlabel("share of the true class predicted as the other")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_saliency_rows(images: np.ndarray, maps: np.ndarray, threshold: float, captions: Sequence[tuple[str, str]],
                       title: str, path: Path) -> Path:
    """One row per image: original | saliency heatmap over the face | focus mask (pixels with saliency >= threshold).

    ``captions[i]`` is (caption of the original, caption of the heatmap), e.g. ("#12 true Fear", "pred Sad 0.61").
    """
    n = len(images)
    fig, axes = _grid(n, 3)
    for i in range(n):
        img = images[i].reshape(images.shape[1], images.shape[2])
        _gray(axes[i, 0], img, captions[i][0])
        _gray(axes[i, 1], img, captions[i][1])
        axes[i, 1].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        _gray(axes[i, 2], np.where(maps[i] >= threshold, img, 0), f"focus \u2265{threshold:g}: {(maps[i] >= threshold).mean():.0%}")
    _suptitle(fig, title)
    return _save(fig, path)


def plot_mean_saliency(mean_faces: np.ndarray, mean_maps: np.ndarray, counts: Sequence[int], title: str,
                       path: Path) -> Path:
    """Per class: the mean saliency map over the class's mean face (where the model looks on average)."""
    fig, axes = _grid(1, len(mean_maps))
    for c, ax in enumerate(axes[0]):
        _gray(ax, mean_faces[c], f"{LABELS[c]} (n={counts[c]})")
        if counts[c] == 0:
            ax.text(0.5, 0.5, "none correct", ha="center", va="center", fontsize=SMALL, transform=ax.transAxes)
            continue
        ax.imshow(mean_maps[c], cmap="jet", alpha=0.55, vmin=0, vmax=max(float(mean_maps[c].max()), 1e-6),
                  interpolation="bilinear")
    _suptitle(fig, title)
    return _save(fig, path)


def plot_image_grid(images: np.ndarray, captions: Sequence[str], cols: int, title: str, path: Path,
                    panel: float = PANEL, per_image_range: bool = True, cmap: str = "gray") -> Path:
    """A grid of images with a caption each; each image stretched to its own range by default."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = _grid(rows, cols, panel=panel, caption=CAPTION * min(1.0, panel / PANEL + 0.2))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            continue
        im = np.asarray(images[i], np.float32)
        lo, hi = (float(im.min()), float(im.max())) if per_image_range else (0.0, 255.0)
        ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(captions[i], fontsize=6 if panel < 1.2 else SMALL, pad=1.5)
    _suptitle(fig, title)
    return _save(fig, path)


def plot_feature_maps(image: np.ndarray, maps: np.ndarray, caption: str, cols: int, title: str, path: Path,
                      panel: float = 1.0) -> Path:
    """The input image, then every channel of a [H,W,C] feature map (viridis, each on its own scale)."""
    chans = [maps[..., c] for c in range(maps.shape[-1])]
    n = len(chans) + 1
    rows = max(1, -(-n // cols))
    fig, axes = _grid(rows, cols, panel=panel, caption=CAPTION * 0.8)
    flat = list(axes.flat)
    _gray(flat[0], image, caption, fontsize=6)
    for c, m in enumerate(chans):
        ax = flat[c + 1]
        lo, hi = float(m.min()), float(m.max())
        ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest")
        ax.set_title(f"#{c} max {hi:.2g}", fontsize=6, pad=1.5)
    _suptitle(fig, title)
    return _save(fig, path)


def plot_accuracy_vs_epsilon(eps_pixels: Sequence[float], curves: dict[str, Sequence[float]], n: int, title: str,
                             path: Path) -> Path:
    """Accuracy against epsilon (pixel units, i.e. x/255 of the [0,1] range) for each attack."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for k, ((name, acc), style) in enumerate(zip(curves.items(), ("-o", "-s", "-^"))):
        ax.plot(eps_pixels, acc, style, label=name)
        for e, a in zip(eps_pixels, acc):  # first curve labelled above its points, the others below
            ax.annotate(f"{a:.2f}", (e, a), textcoords="offset points", xytext=(0, 6 if k == 0 else -11), ha="center",
                        fontsize=7, color=f"C{k}")
    ax.set_xticks(list(eps_pixels), [f"{e:g}/255" for e in eps_pixels])
    ax.set_xlabel("epsilon (L\u221e, pixels out of 255)")
    ax.set_ylabel(f"accuracy (n={n})")
    ax.set_ylim(-0.06, 1)
    ax.axhline(1 / len(LABELS), color="gray", ls=":", lw=1, label="chance (1/7)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_adversarial_examples(x: np.ndarray, adv: np.ndarray, captions: Sequence[tuple[str, str]], eps: float,
                              title: str, path: Path) -> Path:
    """One row per example: original (prediction) | perturbation (signed, amplified) | adversarial (prediction)."""
    n = len(x)
    fig, axes = _grid(n, 3)
    for i in range(n):
        img = x[i].reshape(x.shape[1], x.shape[2])
        _gray(axes[i, 0], img, captions[i][0])
        d = (adv[i] - x[i]).reshape(img.shape)
        axes[i, 1].imshow(d, cmap="RdBu_r", vmin=-max(eps, 1e-6), vmax=max(eps, 1e-6), interpolation="nearest")
        axes[i, 1].set_title(f"perturbation \u00b1{eps:g}", fontsize=SMALL, pad=2)
        _gray(axes[i, 2], adv[i].reshape(img.shape), captions[i][1])
    _suptitle(fig, title)
    return _save(fig, path)


def plot_mistake_gallery(rows: Sequence[tuple[str, np.ndarray, Sequence[str]]], cols: int, title: str,
                         path: Path) -> Path:
    """One row per confused pair: its most confident errors with 'true -> predicted, confidence' captions."""
    fig, axes = _grid(len(rows), cols + 1, panel=1.2)
    for r, (name, imgs, caps) in enumerate(rows):
        axes[r, 0].text(0.5, 0.5, name, ha="center", va="center", fontsize=9, wrap=True, transform=axes[r, 0].transAxes)
        for c in range(min(cols, len(imgs))):
            _gray(axes[r, c + 1], imgs[c], caps[c], fontsize=6)
    _suptitle(fig, title)
    return _save(fig, path)


def plot_compare(names: tuple[str, str], histories: tuple[list[dict], list[dict]], recalls: tuple[Sequence[float], Sequence[float]],
                 summary: tuple[str, str], title: str, path: Path) -> Path:
    """Two runs side by side: validation/train accuracy curves, loss curves, and per-class recall bars."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    colors = ("#1f77b4", "#ff7f0e")
    for name, hist, col, summ in zip(names, histories, colors, summary):
        if not hist:
            continue
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["val_accuracy"] for r in hist], "-", color=col, label=f"{name} val")
        axes[0].plot(ep, [r["accuracy"] for r in hist], "--", color=col, alpha=0.6, label=f"{name} train")
        axes[1].plot(ep, [r["val_loss"] for r in hist], "-", color=col, label=f"{name} val")
        axes[1].plot(ep, [r["loss"] for r in hist], "--", color=col, alpha=0.6, label=f"{name} train")
    for ax, t in ((axes[0], "Accuracy per epoch"), (axes[1], "Loss per epoch")):
        ax.set_xlabel("epoch")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    xs = np.arange(len(LABELS))
    for k, (name, rec, col, summ) in enumerate(zip(names, recalls, colors, summary)):
        axes[2].bar(xs + (k - 0.5) * 0.4, rec, 0.4, color=col, label=f"{name}: {summ}")
    axes[2].set_xticks(xs, LABELS, rotation=30, ha="right")
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("recall")
    axes[2].set_title("Per-class recall", fontsize=10)
    axes[2].grid(axis="y", alpha=0.3)
    axes[2].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
