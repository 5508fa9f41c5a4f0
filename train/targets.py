"""Soft training targets: FER+ crowd votes and a teacher's probabilities, blended with the labels."""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_runtime.labels import NUM_CLASSES
from fer_runtime.manifest import PROBS, sha256_file
from fer_runtime.numeric import softmax
from fer_train.data import DataFormatError, Split, read_csv_rows

# ferplus_votes.csv vote columns -> FER2013 class index (contempt, unknown and NF are not classes here).
FERPLUS_COLUMNS = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}


def load_ferplus_votes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-row vote distributions [N,7] (zeros where no vote names a FER2013 class) and Usage [N].

    Rows are in FER2013's row order, so row ``i`` belongs to FER2013 row ``i``.
    """
    path = Path(path)
    header, rows, lines = read_csv_rows(path, ("Usage", *FERPLUS_COLUMNS))
    cols = [header.index(c) for c in FERPLUS_COLUMNS]
    iu = header.index("Usage")
    votes = np.zeros((len(rows), NUM_CLASSES), np.float32)
    for i, (r, line) in enumerate(zip(rows, lines)):
        try:
            counts = [float(r[c]) for c in cols]
        except ValueError:
            raise DataFormatError(f"{path}:{line}: vote counts must be numbers, got {[r[c] for c in cols]}") from None
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise DataFormatError(f"{path}:{line}: vote counts must be finite and >= 0, got {[r[c] for c in cols]}")
        votes[i, list(FERPLUS_COLUMNS.values())] = counts
    usage = [r[iu].strip() for r in rows]
    total = votes.sum(1, keepdims=True)
    dist = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return dist, np.array(usage)


def ferplus_targets(path: str | Path, train: Split, data_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """FER+ distributions for the rows of ``train`` (a FER2013 Training split) and a mask of rows that have one.

    ``data_rows`` is the row count of the FER2013 file ``train`` came from; the votes file must have as
    many rows, in the same order (checked by row count and Usage), else DataFormatError.
    """
    dist, usage = load_ferplus_votes(path)
    if len(dist) != data_rows:
        raise DataFormatError(f"{path}: has {len(dist)} vote rows but the data file has {data_rows}; "
                              "FER+ votes need the full FER2013 file in its original row order")
    wrong = np.flatnonzero(usage[train.ids] != "Training")
    if len(wrong):
        raise DataFormatError(f"{path}: row {int(train.ids[wrong[0]]) + 1} is {usage[train.ids[wrong[0]]]!r}, "
                              "not Training: the votes are not in the data file's row order")
    d = dist[train.ids]
    return d, d.sum(1) > 0


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs ** (1/T)`` renormalised: the softmax of ``logits / T`` for the same logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return softmax(np.log(np.clip(probs, 1e-12, 1.0)), temperature, axis=1).astype(np.float32)


def _member_hashes(teacher: str | Path) -> list[str]:
    """The sha256 of each member file of a teacher run or ensemble, in member order."""
    from fer_train.runs import member_paths

    return [sha256_file(p) for p in member_paths(teacher)]


def _combined(hashes: list[str]) -> str:
    """One sha256 over the member hashes, in the given order."""
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def teacher_sha256(teacher: str | Path) -> str:
    """Which teacher this is: one sha256 over its member files' bytes (not their paths or order: the teacher averages
    its members), as config.json records it."""
    return _combined(sorted(_member_hashes(teacher)))


def legacy_teacher_sha256(teacher: str | Path) -> str:
    """:func:`teacher_sha256` as runs recorded it before the member order was ignored: over the hashes in member order."""
    return _combined(_member_hashes(teacher))


def teacher_key(teacher: str | Path, x: np.ndarray, tta: str) -> str:
    """What a teacher's probabilities depend on: the member files' bytes, the TTA mode and the images."""
    h = hashlib.sha256(tta.encode())
    for digest in sorted(_member_hashes(teacher)):  # member order does not change the teacher
        h.update(digest.encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _read_cache(cache: Path, key: str, rows: int) -> np.ndarray | None:
    """The cached probabilities if ``cache`` holds them for ``key``; None if it is missing, unreadable or another key's."""
    try:
        with np.load(cache) as f:
            if str(f["key"]) == key and (probs := f["probs"]).shape == (rows, NUM_CLASSES):  # each f[...] reads the file
                return probs
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged: predict again and rewrite it
        pass
    return None


def teacher_targets(teacher: str | Path, x: np.ndarray, temperature: float = 1.0, tta: str = "flip",
                    cache: Path | None = None) -> np.ndarray:
    """A teacher run's or ensemble's ``tta``-averaged probabilities on ``x``, softened by ``temperature``.

    With ``cache`` (an ``.npz`` file) the probabilities are read from it when they were computed from the
    same member files, TTA and images (:func:`teacher_key`), and written to it otherwise (also when it is
    damaged): a resumed run does not predict again.
    """
    from fer_runtime.atomic import atomic_path
    from fer_train.inference import load_models, predict_probs

    key = teacher_key(teacher, x, tta)
    if cache is not None and (cached := _read_cache(cache, key, len(x))) is not None:
        return soften(cached, temperature)
    probs = predict_probs(load_models(teacher), x, tta=tta)
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, probs=probs, key=np.array(key))
    return soften(probs, temperature)


def live_teacher(teacher: str | Path, temperature: float = 1.0, tta: str = "none",
                 compute_dtype: str = "float32") -> Callable[[Any], Any]:
    """``f(images [B,48,48,1] float32 0..255 tensor) -> [B,7]``: the teacher's ``tta``-averaged probabilities on
    exactly these images, softened by ``temperature`` as :func:`teacher_targets` does (consistent teaching).

    ``compute_dtype`` ``"bfloat16"`` runs the members' layers in mixed bfloat16 (the logits stay float32).
    """
    import tensorflow as tf

    from fer_train.inference import load_models, logits_layer, member_logits_fn

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    models = load_models(teacher)
    if compute_dtype == "bfloat16":
        for m in models:
            keep = {logits_layer(m).name, PROBS}  # the scores and what follows them stay float32
            for layer in m.layers:
                if layer.dtype_policy.name == "float32" and layer.name not in keep:
                    layer.dtype_policy = "mixed_bfloat16"
    logits = member_logits_fn(models, tta)

    def f(images: Any) -> Any:
        probs = tf.reduce_mean(tf.nn.softmax(tf.cast(logits(images), tf.float32), axis=-1), axis=[1, 2])
        return tf.nn.softmax(tf.math.log(tf.clip_by_value(probs, 1e-12, 1.0)) / temperature, axis=-1)
    return f


def blend(labels: np.ndarray, parts: list[tuple[float, np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """One-hot ``labels`` mixed with soft targets: ``(1 - sum w) * onehot + sum w * t`` per row.

    ``parts`` holds (weight, targets [N,7], mask [N] or None); rows outside a mask keep that weight on
    the label.
    """
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    out = onehot.copy()
    for w, t, mask in parts:
        if not 0 <= w <= 1:
            raise ValueError(f"target weight must be in [0, 1], got {w}")
        use = np.ones(len(labels), bool) if mask is None else mask
        out[use] += w * (t[use] - onehot[use])
    return out
