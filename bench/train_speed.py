"""Training speed: images per second for float32 and bfloat16, for the shipped members' network configs.

Usage (from the repo, with the ``train`` extra installed):

    python bench/train_speed.py [--data ../shared/data/fer2013/fer2013.csv.gz] [--steps 40] [--warmup 10]

One process, one table. For each member config (``accurate``: ``experiments/cnn_main``; ``fast``:
``experiments/fast_kd``) and each precision (``float32``; ``bfloat16``, Keras ``mixed_bfloat16``) it times
``model.fit`` at batch 64 in two ways:

- **step**: the bare training step, on batches already in memory (no augmentation);
- **pipeline**: what ``fer-train fit`` runs, the tf.data pipeline of :mod:`fer_train.pipeline` with the run's
  augmentation on real Training rows (validation excluded).

Each figure is the median of ``--repeats`` timed spans of ``--steps`` steps after ``--warmup`` steps. The CPU
model and its bf16 flags head the table (``ONEDNN_VERBOSE=1`` shows which oneDNN kernels ran).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from fer_runtime.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
CONFIGS = {"accurate": ROOT / "experiments" / "cnn_main", "fast": ROOT / "experiments" / "fast_kd"}
PRECISIONS = ("float32", "bfloat16")
BATCH = 64


def time_fit(model, ds, steps: int, warmup: int, repeats: int) -> float:
    """Median images/s of ``repeats`` spans of ``steps`` training steps on ``ds`` (repeated), after a warm-up."""
    it = ds.repeat()
    model.fit(it, steps_per_epoch=warmup, epochs=1, verbose=0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(it, steps_per_epoch=steps, epochs=1, verbose=0)
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the Kaggle fer2013.csv(.gz)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per span")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=6400, help="Training rows fed to the pipeline")
    args = ap.parse_args(argv)
    rows = args.rows - args.rows % BATCH  # whole batches only: img/s counts steps x BATCH images
    if rows < BATCH:
        ap.error(f"--rows must be at least {BATCH}")

    from fer_train.tf_env import import_tensorflow

    tf = import_tensorflow()
    import keras

    from fer_train.config import read_run_config
    from fer_train.data import load_kaggle_csv
    from fer_train.fit import make_optimizer
    from fer_train.pipeline import make_dataset
    from fer_train.precision import POLICY, cpu_bf16_flags

    train = load_kaggle_csv(args.data)["Training"]
    x, y = train.x[:rows], train.y[:rows]
    onehot = np.eye(7, dtype=np.float32)[y]
    results: dict[tuple[str, str, str], float] = {}
    for name, run in CONFIGS.items():
        _, mcfg, tcfg = read_run_config(run)
        from fer_train.models import build_model

        bare = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), onehot)).batch(BATCH).cache()
        # as fer-train fit builds it: the epoch variable selects the seeded per-epoch order (resumable runs)
        piped = make_dataset(x, y, BATCH, training=True, augment=tcfg.augment, seed=1,
                             epoch=tf.Variable(0, dtype=tf.int64))
        for precision in PRECISIONS:
            keras.mixed_precision.set_global_policy(POLICY[precision])
            keras.utils.set_random_seed(1)
            for mode, ds in (("step", bare), ("pipeline", piped)):
                model = build_model(mcfg)
                model.compile(make_optimizer(tcfg), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
                results[name, precision, mode] = time_fit(model, ds, args.steps, args.warmup, args.repeats)
                print(f"  {name} {precision} {mode}: {results[name, precision, mode]:.0f} img/s", file=sys.stderr)
        keras.mixed_precision.set_global_policy("float32")

    flags = "/".join(cpu_bf16_flags()) or "none"
    print(f"Training speed, batch {BATCH}: {cpu_model()}, {os.cpu_count()} CPU, bf16 flags: {flags}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}; median of {args.repeats} x {args.steps} steps\n")
    print("| member config | what | float32 img/s | bfloat16 img/s | bf16 / fp32 |\n|---|---|---:|---:|---:|")
    for name in CONFIGS:
        for mode in ("step", "pipeline"):
            f32, b16 = results[name, "float32", mode], results[name, "bfloat16", mode]
            print(f"| {name} | {mode} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}x |")
    for name in CONFIGS:
        share = results[name, "float32", "pipeline"] / results[name, "float32", "step"]
        print(f"\n{name}: the pipeline runs at {share:.0%} of the bare float32 step", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
