"""tf.data input pipelines; augmentation lives here, not in the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from fer_runtime.labels import NUM_CLASSES


@dataclass
class AugmentConfig:
    """Random flip, shift, rotation, zoom and erasing applied to training batches only; optionally mixup or cutmix."""

    enabled: bool = True
    flip: bool = True
    shift: float = 0.1  # fraction of width/height
    rotation: float = 10.0  # degrees
    zoom: float = 0.1
    erase: float = 0.0  # probability of random erasing (one rectangle of noise; Zhong et al. 2017)
    mixup: float = 0.0  # Beta(alpha, alpha) of per-image mixup with another image of the batch (0 = off)
    cutmix: float = 0.0  # Beta(alpha, alpha) of per-image cutmix (0 = off); at most one of mixup and cutmix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix blends the targets of training batches."""
        return self.enabled and (self.mixup > 0 or self.cutmix > 0)

    def check(self, class_weights: bool = False) -> None:
        """Raise ValueError naming the first setting out of range (``class_weights``: whether they are used)."""
        if not 0 <= self.erase <= 1:
            raise ValueError(f"erase probability must be in [0, 1], got {self.erase}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0")
        if self.mixup > 0 and self.cutmix > 0:
            raise ValueError("choose one of mixup and cutmix")
        if self.mixes and class_weights:
            raise ValueError("mixup and cutmix blend targets; they cannot be combined with class weights")


def _stream(seed: int | None, i: int) -> int | None:
    """The seed of the ``i``-th random layer: one stream each. Layers given the same seed draw the same numbers,
    which tied every flip to the sign of its rotation and the zoom to the angle."""
    return None if seed is None else seed * 8 + i


def make_augmenter(cfg: AugmentConfig, seed: int | None = None):
    """A Keras Sequential of random layers, used inside ``Dataset.map`` (or None when disabled). Each layer draws
    from its own seed."""
    import keras
    from keras import layers

    if not cfg.enabled:
        return None
    steps = []
    if cfg.flip:
        steps.append(layers.RandomFlip("horizontal", seed=_stream(seed, 0)))
    if cfg.rotation > 0:
        steps.append(layers.RandomRotation(cfg.rotation / 360.0, fill_mode="nearest", seed=_stream(seed, 1)))
    if cfg.shift > 0:
        steps.append(layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="nearest", seed=_stream(seed, 2)))
    if cfg.zoom > 0:
        steps.append(layers.RandomZoom(cfg.zoom, fill_mode="nearest", seed=_stream(seed, 3)))
    if cfg.erase > 0:  # (p, p): exactly probability p per image (a single float would draw p from [0, p])
        steps.append(layers.RandomErasing(factor=(cfg.erase, cfg.erase), value_range=(0, 255), seed=_stream(seed, 4)))
    return keras.Sequential(steps, name="augment") if steps else None


def make_batch_mixer(cfg: AugmentConfig, seed: int | None = None, class_weights: bool = False):
    """Keras ``MixUp`` or ``CutMix``, which blend images *and* targets within a batch (or None when off)."""
    from keras import layers

    cfg.check(class_weights)
    if not cfg.mixes:
        return None
    # float32 whatever the global policy: under mixed_bfloat16 the targets would otherwise be cast to bfloat16
    if cfg.mixup > 0:
        return layers.MixUp(alpha=cfg.mixup, seed=_stream(seed, 5), dtype="float32")
    return layers.CutMix(factor=(cfg.cutmix, cfg.cutmix), seed=_stream(seed, 5), dtype="float32")  # (a, a): alpha exactly a


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool,
                 augment: AugmentConfig | None = None, label_smoothing: float = 0.0,
                 soft_targets: np.ndarray | None = None, class_weights: np.ndarray | None = None,
                 seed: int = 0, epoch: Any = None, teacher: tuple[Callable[[Any], Any], float] | None = None):
    """Batches of (float32 0..255 images, one-hot or soft targets[, per-sample class weights]).

    ``teacher`` (training only): ``(f, w)`` with ``f(images) -> [B,7]`` probabilities; each batch's targets
    become ``(1 - w) * targets + w * f(images)`` on the images as augmented and mixed (consistent teaching), then
    label smoothing. ``f`` runs in the input pipeline, on the CPU.

    Training data is shuffled each epoch. With ``epoch`` (an int64 ``tf.Variable`` the caller sets at the
    start of every epoch) the order is a function of ``(seed, epoch)`` alone, so a run resumed at epoch k
    sees the orders an uninterrupted run saw; without it, each pass reshuffles from ``seed``.
    """
    import tensorflow as tf

    targets = soft_targets if soft_targets is not None else np.eye(NUM_CLASSES, dtype=np.float32)[y]
    live = training and teacher is not None

    def smooth(t: Any) -> Any:
        return t * (1 - label_smoothing) + label_smoothing / NUM_CLASSES if label_smoothing > 0 else t

    if not live:  # with a live teacher: smoothed after its share is blended in, as cached
        targets = smooth(targets)
    cols: tuple = (x, targets.astype(np.float32))
    if class_weights is not None:
        cols += (class_weights[y].astype(np.float32),)
    if training and epoch is not None:
        n, tensors = len(x), tuple(tf.constant(c) for c in cols)

        def order(_: Any) -> Any:  # run when an epoch's iterator starts, after the caller has set `epoch`
            key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch.read_value(), tf.int64)])
            return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(tf.range(n), seed=key))

        # indices are batched before the gather: one gather per batch, not one dataset element per image
        ds = tf.data.Dataset.range(1).flat_map(order).batch(batch_size)
        ds = ds.map(lambda i: tuple(tf.gather(t, i) for t in tensors), num_parallel_calls=tf.data.AUTOTUNE)
        # flat_map hides the length; without it Keras cannot size an epoch and runs one extra, empty step
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    else:
        ds = tf.data.Dataset.from_tensor_slices(cols)
        if training:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
    ds = ds.map(lambda a, *r: (tf.cast(a, tf.float32), *r), num_parallel_calls=tf.data.AUTOTUNE)
    aug = make_augmenter(augment, seed) if (training and augment is not None) else None
    if aug is not None:
        ds = ds.map(lambda a, *r: (aug(a, training=True), *r), num_parallel_calls=tf.data.AUTOTUNE)
    mixer = make_batch_mixer(augment, seed, class_weights is not None) if (training and augment is not None) else None
    if mixer is not None:
        def mix(a: Any, t: Any) -> tuple[Any, Any]:
            out = mixer({"images": a, "labels": t}, training=True)
            return out["images"], out["labels"]

        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    if live:
        fn, w = teacher

        def taught(a: Any, t: Any, *r: Any) -> tuple:
            # augmentation under a bfloat16 policy yields bfloat16 images; the teacher takes float32
            return (a, smooth((1.0 - w) * t + w * tf.cast(fn(tf.cast(a, tf.float32)), tf.float32)), *r)

        ds = ds.map(taught, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
