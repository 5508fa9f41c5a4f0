"""Inference benchmark: onnxruntime ensemble vs the same Keras members in TF, and saliency engines.

Usage (from the repo, with the ``train`` and ``cpu`` extras installed):

    python bench/infer_bench.py RUN_OR_ENSEMBLE... [--model-dir models] [--data ../shared/data/fer2013/fer2013.csv.gz]

Prints one table: img/s at batch 1, 32 and 256 for (a) onnxruntime on the shipped forward graph,
(b) Keras ``model.predict``, (c) a ``tf.function`` of the models; then seconds per image for a
saliency map via the ONNX gradient graph, TF GradientTape, and finite differences (one forward
pass per pixel, batched through onnxruntime). Each figure is the median of ``--repeats`` runs.
The TF paths compute and average the same views as the ONNX graph (``fer_train.inference.views``: the
image, its mirror, and with crop TTA the ten crop views). RUN... must be the exported variant's members.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="runs, ensemble dirs or .keras files the ONNX model was exported from")
    ap.add_argument("--model-dir", default=None, help="exported model dir (default: the packaged models)")
    ap.add_argument("--data", default="../shared/data/fer2013/fer2013.csv.gz")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--saliency-images", type=int, default=8)
    args = ap.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    from fer_runtime.manifest import CLASS_INPUT, IMAGE_INPUT, LOGITS, PROBS, SALIENCY, read_manifest
    from fer_runtime.model_files import read_graph
    from fer_runtime.predictor import default_model_dir
    from fer_train import inference
    from fer_train.data import load_source

    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    man = read_manifest(model_dir)
    var = man.variants[man.default_variant]
    fwd = read_graph(model_dir, man, var.forward).session(["CPUExecutionProvider"])
    sal = read_graph(model_dir, man, var.saliency).session(["CPUExecutionProvider"])
    models = [m for run in args.runs for m in inference.load_models(run)]
    if len(models) != len(var.members):
        raise SystemExit(f"error: {len(models)} model(s) given, but {model_dir}'s {man.default_variant} has "
                         f"{len(var.members)} members ({', '.join(m.name for m in var.members)}): pass those runs")
    x_all = load_source(args.data)["PublicTest"].x.astype(np.float32)

    rows = []
    logits_fn = inference.member_logits_fn(models, var.tta)  # one tf.function over every member and view
    for bs in (1, 32, 256):
        x = x_all[:bs]
        n_iter = max(1, 256 // bs)  # same number of images per timing for every batch size

        def ort_run():
            for _ in range(n_iter):
                fwd.run([PROBS], {IMAGE_INPUT: x})

        xt = tf.constant(x)

        def keras_predict():
            for _ in range(n_iter):
                vs = [v.numpy() for v in inference.views(xt, var.tta)]  # the graph's views, made as it makes them
                for m in models:
                    for v in vs:
                        m.predict(v, batch_size=bs, verbose=0)

        def tf_function():
            for _ in range(n_iter):
                inference.probs_of(logits_fn(xt).numpy())

        for name, fn in (("onnxruntime", ort_run), ("keras predict", keras_predict), ("tf.function", tf_function)):
            rows.append((f"forward, batch {bs}", name, n_iter * bs / _median_time(fn, args.repeats), "img/s"))

    k = args.saliency_images
    xs = x_all[:k]
    cls = fwd.run([PROBS], {IMAGE_INPUT: xs})[0].argmax(1).astype(np.int64)
    t_onnx = _median_time(lambda: sal.run([SALIENCY], {IMAGE_INPUT: xs, CLASS_INPUT: cls}), args.repeats) / k
    reference = inference.reference_saliency_fn(models, var.tta)
    xs_t, cls_t = tf.constant(xs), tf.constant(cls)
    t_tape = _median_time(lambda: reference(xs_t, cls_t).numpy(), args.repeats) / k

    def finite_differences():
        # one forward pass per pixel (+1 grey level), batched: 2304 perturbed copies of one image
        img, c = xs[0], int(cls[0])
        base = fwd.run([LOGITS], {IMAGE_INPUT: img[None]})[0][0, c]
        pert = np.repeat(img[None], 48 * 48, axis=0).reshape(48 * 48, -1)
        pert[np.arange(48 * 48), np.arange(48 * 48)] += 1.0
        out = np.concatenate([fwd.run([LOGITS], {IMAGE_INPUT: pert[i:i + 256].reshape(-1, 48, 48, 1)})[0][:, c]
                              for i in range(0, len(pert), 256)])
        return (out - base).reshape(48, 48)

    t_fd = _median_time(finite_differences, max(1, args.repeats // 2))
    rows += [("saliency, per image", "ONNX gradient graph", t_onnx * 1e3, "ms"),
             ("saliency, per image", "TF GradientTape", t_tape * 1e3, "ms"),
             ("saliency, per image", "finite differences (2304 fwd)", t_fd * 1e3, "ms")]

    print(f"model: {model_dir} variant {man.default_variant} ({len(models)} member(s), TTA {var.tta}); "
          f"onnxruntime {ort.__version__}, tensorflow {tf.__version__}; {os.cpu_count()} CPU; median of {args.repeats}")
    print(f"| {'what':<22} | {'engine':<31} | {'value':>10} | unit  |")
    print(f"|{'-' * 24}|{'-' * 33}|{'-' * 12}|-------|")
    for what, eng, val, unit in rows:
        print(f"| {what:<22} | {eng:<31} | {val:>10.1f} | {unit:<5} |")


if __name__ == "__main__":
    main()
