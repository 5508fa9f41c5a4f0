"""A member made ready for int8: batch norm folded into the layer before it, then every kernel put on the int8 grid.

Static int8 quantization (``fer-quantize``) rounds each conv and dense kernel but the logits layer's (kept
float), per output channel, to ``scale * k`` with ``scale = max|w| / 127`` and integer ``k`` in [-127, 127]
(onnxruntime's symmetric per-channel rule), after the converter has folded each batch norm into the
kernel before it. A model whose folded kernels already lie on that grid loses nothing when its weights
are quantized: the int8 graph then differs from the float graph by the activation rounding alone.

:func:`fold_batch_norm` builds the same network without batch norm (inference-mode statistics folded
into a kernel and bias, and without the activation-rounding layers of a quantization-aware run,
``fit --act-quant``); :func:`snap_kernels` rounds the kernels in place. Snapping changes the model a
little, so the result is a new member, measured like any other (``fer-train evaluate``).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fer_train import runs
from fer_runtime.manifest import LOGITS
from fer_train.models import ModelConfig, batch_norm_affine, build_model, producer

INT8_LEVELS = 127  # symmetric int8: k in [-127, 127]


def grid_scale(kernel: np.ndarray) -> np.ndarray:
    """Per-output-channel step ``max|w| / 127`` of a Keras kernel (output channels on the last axis), keepdims."""
    axes = tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / INT8_LEVELS
    return np.where(scale > 0, scale, 1.0).astype(kernel.dtype)


def on_grid(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` rounded to its own per-output-channel int8 grid (the channel maximum is kept exactly)."""
    scale = grid_scale(kernel)
    return (np.round(kernel / scale) * scale).astype(kernel.dtype)


def _is_kernel_layer(layer: Any) -> bool:
    from keras import layers

    return isinstance(layer, (layers.Conv2D, layers.Dense))


def fold_batch_norm(model: Any, cfg: ModelConfig) -> tuple[Any, ModelConfig]:
    """(The network of ``cfg`` without batch norm or activation rounding, its config) computing what ``model``
    computes in inference (without the rounding).

    Each BatchNormalization must read the output of a bias-free Conv2D or Dense (how :mod:`fer_train.models`
    builds them); its moving statistics are folded in (:func:`fer_train.models.batch_norm_affine`):
    ``w' = w * scale``, ``b' = offset``. Raises ValueError for a model built any other way.
    """
    from keras import layers

    folded_cfg = replace(cfg, batch_norm=False, act_quant=False)  # the rounding layers of a QAT run go too
    try:
        out = build_model(folded_cfg)
    except ValueError as e:  # a net that is sound only with batch norm
        raise ValueError(f"batch norm cannot be folded out of this net: {e}") from None
    chain = model.layers
    bn_of: dict[str, Any] = {}
    for layer in chain:
        if isinstance(layer, layers.BatchNormalization):
            prev = producer(layer)
            if not _is_kernel_layer(prev) or prev.use_bias:
                raise ValueError(f"batch norm {layer.name!r} does not follow a bias-free conv or dense layer")
            bn_of[prev.name] = layer
    for layer in out.layers:
        if not layer.weights:
            continue
        try:
            src = model.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"layer {layer.name!r} of the folded network is not in the model; "
                             "was the model built from this config?") from None
        weights = [np.asarray(w) for w in src.get_weights()]
        bn = bn_of.get(layer.name)
        if bn is not None:
            try:
                scale, offset = batch_norm_affine(bn, len(src.output.shape))
            except ValueError as e:
                raise ValueError(f"batch norm {bn.name!r} {e}") from None
            weights = [weights[0] * scale, offset]
        layer.set_weights([w.astype(np.float32) for w in weights])
    if missing := [l.name for l in chain if _is_kernel_layer(l) and not l.use_bias and l.name not in bn_of]:
        raise ValueError(f"no batch norm follows the bias-free layer(s) {', '.join(missing)}")
    return out, folded_cfg


def snap_kernels(model: Any) -> int:
    """Round every Conv2D and Dense kernel of ``model`` but the logits layer's to its int8 grid, in place; returns how
    many. The logits layer stays as it is: ``fer-quantize`` keeps it float, so rounding it would only cost."""
    count = 0
    for layer in model.layers:
        if _is_kernel_layer(layer) and layer.name != LOGITS:
            weights = layer.get_weights()
            layer.set_weights([on_grid(np.asarray(weights[0])), *weights[1:]])
            count += 1
    return count


DERIVED_KEY = "derived"  # config.json: where a derived member came from and how


def make_int8_ready(source: str | Path, out: str | Path) -> Path:
    """Write run folder ``out`` holding ``best.keras``: the member ``source`` (a run folder, meaning its best.keras,
    or a .keras file inside a run) with batch norm folded and kernels on the int8 grid, and a config.json.

    The config is the source run's, with ``batch_norm`` and ``act_quant`` false, input paths re-based on ``out`` and a
    ``derived`` record; it has no history, so an export measures the new member's accuracy itself.
    Raises :class:`fer_train.runs.RunError` for a source that is not a member of a run, or an ``out`` that exists.
    """
    from fer_train.config import data_record, read_run_config, stored_inputs
    from fer_train.inference import KerasInferenceError, load_model
    from fer_runtime.atomic import atomic_dir

    source, out = Path(source), Path(out)
    if (source / runs.ENSEMBLE).is_file():
        raise runs.RunError(f"{source} is an ensemble; pass one of its members (a run folder or .keras file)")
    member = source / runs.BEST if source.is_dir() else source
    run = member.parent
    if not (run / runs.CONFIG).exists():
        raise runs.RunError(f"{member}: not inside a fer-train run folder (no {runs.CONFIG} beside it)")
    if out.exists():
        raise runs.RunError(f"{out} already exists; choose a new --out")
    conf, model_cfg, train_cfg = read_run_config(run)
    try:
        model = load_model(member)
    except KerasInferenceError as e:
        raise runs.RunError(str(e)) from None
    try:
        folded, folded_cfg = fold_batch_norm(model, model_cfg)
    except ValueError as e:
        raise runs.RunError(f"{member}: {e}") from None
    snap_kernels(folded)
    conf = dict(conf)
    conf["model"] = folded_cfg.to_dict()
    conf["train"] = stored_inputs(train_cfg, out).to_dict()
    if isinstance(conf.get("data"), dict) and train_cfg.data:
        conf["data"] = {**conf["data"], **data_record(train_cfg.data, out, conf["data"].get("sha256"))}
    conf[DERIVED_KEY] = {"from": os.path.relpath(member.resolve(), out.resolve()),
                         "transform": "batch norm folded, activation rounding layers dropped; conv and dense "
                                      "kernels but the logits layer's on the symmetric per-channel int8 grid "
                                      "(max|w|/127)"}
    with atomic_dir(out) as stage:
        runs.save_keras(folded, stage / runs.BEST, include_optimizer=False)
        runs.write_json(stage / runs.CONFIG, conf)
    return out

