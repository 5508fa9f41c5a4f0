"""Layer outputs: the feature maps of one layer (first member) for one image, as a grid."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fer_analysis.figures import CAPTION, grid, grid_cols, gray, save, suptitle
from fer_analysis.inputs import AnalysisError, Target, check_image_paths, check_indices, layer_model, pick_layer, read_images
from fer_analysis.results import result, write_csv
from fer_runtime.labels import LABELS
from fer_train import runs


def layer_outputs(model: Any, layer: str, image: np.ndarray) -> np.ndarray:
    """The feature maps [H,W,C] of ``layer`` for one raw 0..255 image [48,48,1] (inference mode)."""
    sub = layer_model(model, layer)
    return np.asarray(sub(np.asarray(image, np.float32)[None], training=False))[0]


def plot_feature_maps(image: np.ndarray, maps: np.ndarray, caption: str, cols: int, title: str, path: Path,
                      panel: float = 1.0) -> Path:
    """The input image, then every channel of a [H,W,C] feature map (viridis, each on its own scale)."""
    chans = [maps[..., c] for c in range(maps.shape[-1])]
    n = len(chans) + 1
    rows = max(1, -(-n // cols))
    fig, axes = grid(rows, cols, panel=panel, caption=CAPTION * 0.8)
    flat = list(axes.flat)
    gray(flat[0], image, caption, fontsize=6)
    for c, m in enumerate(chans):
        ax = flat[c + 1]
        lo, hi = float(m.min()), float(m.max())
        ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest")
        ax.set_title(f"#{c} max {hi:.2g}", fontsize=6, pad=1.5)
    suptitle(fig, title)
    return save(fig, path)


def analyze_layer_outputs(t: Target, out: Path, layer: str | None = None, index: int | None = None,
                          image: str | Path | None = None, max_maps: int = 256) -> dict[str, Any]:
    """The feature maps of a layer (first member) for one image (split row ``index`` or an ``image`` file), as a grid."""
    from fer_train.inference import predict_probs

    if image is not None and index is not None:
        raise AnalysisError("give either --index or --image, not both")
    if image is not None:
        check_image_paths([image], t.split_name)
    model = t.models[0]
    layer = pick_layer(model, layer, "map", t.path)
    if image is not None:
        x, name, true = read_images([image], t.split_name)[0], Path(image).name, -1
    else:
        row = int(check_indices([index or 0], t.split, t.split_name)[0])
        x, name, true = t.split.x[row].astype(np.float32), f"#{row}", int(t.split.y[row])
    maps = layer_outputs(model, layer, x)
    shown = maps[..., :max_maps] if max_maps > 0 else maps
    p = predict_probs(t.models, x[None])[0]
    cap = f"{name[:14]}{' true ' + LABELS[true] if true >= 0 else ''}\npred {LABELS[p.argmax()]} {p.max():.2f}"
    cols = grid_cols(shown.shape[-1] + 1)
    title = (f"{t.name}: {layer} output {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}"
             f"{'' if shown.shape[-1] == maps.shape[-1] else f' (first {shown.shape[-1]} shown)'}")
    fig = plot_feature_maps(x[..., 0], shown, cap, cols, title, out / "layer_outputs.png",
                            panel=0.9 if shown.shape[-1] > 32 else 1.2)
    c = write_csv(out / "layer_outputs.csv", ["channel", "mean", "max", "active_fraction"],
                  [[ch, float(maps[..., ch].mean()), float(maps[..., ch].max()), float((maps[..., ch] > 0).mean())]
                   for ch in range(maps.shape[-1])])
    summary = {"run": str(t.path), "member": str(runs.member_paths(t.path)[0]), "layer": layer, "image": name, "true": LABELS[true] if true >= 0 else None,
               "predicted": LABELS[int(p.argmax())], "confidence": float(p.max()), "shape": list(maps.shape),
               "channels_shown": int(shown.shape[-1]), "dead_channels": int((maps.max(axis=(0, 1)) <= 0).sum())}
    return result("layer_outputs", [fig], [c], summary, out)
