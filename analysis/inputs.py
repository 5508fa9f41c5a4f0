"""What an analysis runs on: the run's models, the split, chosen images and layers, validated up front.

Every user mistake (unknown layer, missing image file, index out of range, unknown engine, ...)
raises :class:`AnalysisError` with one line that names the valid choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_runtime.errors import FerError
from fer_runtime.labels import IMAGE_SIZE, LABELS
from fer_train import runs
from fer_train.data import DataSource, Split


class AnalysisError(FerError, ValueError):
    """An analysis argument is wrong (the message is one line and lists the valid choices)."""


@dataclass
class Target:
    """A run, ensemble or .keras file and the split it is analysed on; models, data and predictions load lazily."""

    path: Path
    split_name: str = "PublicTest"
    data: str | None = None  # data source override (default: what the run was trained on)
    _source: DataSource | None = field(default=None, repr=False)
    _models: list[Any] | None = field(default=None, repr=False)
    _probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """A short display name: the run folder (or the .keras file's folder and name)."""
        return self.path.name if self.path.is_dir() else f"{self.path.parent.name}/{self.path.name}"

    @property
    def source(self) -> DataSource:
        """The data source (loaded on first use)."""
        if self._source is None:
            from fer_train.evaluate import data_path_of, load_for

            self._source = load_for(self.path, self.data or data_path_of(self.path), self.split_name)
        return self._source

    @property
    def split(self) -> Split:
        """The analysed split; an unknown or empty split raises AnalysisError listing the splits."""
        from fer_train.evaluate import split_of

        try:
            s = split_of(self.source, self.split_name)
        except KeyError as e:
            raise AnalysisError(str(e.args[0])) from None
        if len(s) == 0:
            raise AnalysisError(f"split {self.split_name!r} of {self.source.path} is empty")
        return s

    @property
    def models(self) -> list[Any]:
        """The member Keras models (loaded on first use)."""
        if self._models is None:
            from fer_train.inference import load_models

            self._models = load_models(self.path)
        return self._models

    @property
    def probs(self) -> np.ndarray:
        """Mean member softmax [N,7] on the whole split (computed once)."""
        if self._probs is None:
            from fer_train.inference import predict_probs

            self._probs = predict_probs(self.models, self.split.x)
        return self._probs

    def labelled_rows(self) -> np.ndarray:
        """Indices of the split's rows that have a label; AnalysisError if there are none."""
        rows = np.flatnonzero(self.split.y >= 0)
        if len(rows) == 0:
            raise AnalysisError(f"split {self.split_name!r} has no labels; choose a labelled split (PublicTest, PrivateTest, val)")
        return rows

    def params(self) -> int:
        """Total parameter count over the members."""
        return int(sum(m.count_params() for m in self.models))


def open_target(path: str | Path, split: str = "PublicTest", data: str | Path | None = None,
                source: DataSource | None = None) -> Target:
    """A :class:`Target` for ``path``; fails fast (RunError naming it) if it is not a run, ensemble or .keras file."""
    path = Path(path)
    runs.member_paths(path)
    return Target(path, split, str(data) if data else None, source)


def check_choice(option: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise AnalysisError listing them."""
    if value not in choices:
        raise AnalysisError(f"unknown {option} {value!r}; choose from {', '.join(choices)}")
    return value


def check_indices(indices: Sequence[int], split: Split, split_name: str) -> np.ndarray:
    """Row indices into ``split`` as an int array; out-of-range ones raise AnalysisError."""
    idx = np.asarray(list(indices), np.int64)
    bad = [int(i) for i in idx if not 0 <= i < len(split)]
    if bad:
        raise AnalysisError(f"--index {bad[0]} is out of range; {split_name} has rows 0..{len(split) - 1}")
    return idx


def check_image_paths(paths: Sequence[str | Path], split_name: str = "PublicTest") -> None:
    """Fail fast (before TensorFlow loads) if an ``--image`` path is not an existing file."""
    from fer_runtime.images import IMAGE_EXTENSIONS

    for p in map(Path, paths):
        if not p.is_file():
            where = f" or --index N for {split_name} rows"
            raise AnalysisError(f"--image {p}: no such file; give an existing "
                                f"{'/'.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))} file{where}")


def read_images(paths: Sequence[str | Path], split_name: str = "PublicTest") -> np.ndarray:
    """Image files as model input [N,48,48,1] float32 (gray, raw 0..255); a bad path raises AnalysisError."""
    from fer_runtime.errors import InvalidImageError
    from fer_runtime.images import preprocess, read_image

    check_image_paths(paths, split_name)
    out = []
    for p in map(Path, paths):
        try:
            out.append(preprocess(read_image(p)))
        except InvalidImageError as e:
            raise AnalysisError(f"--image {p}: {e}") from None
    return np.stack(out)[..., None].astype(np.float32) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)


def per_class_sample(split: Split, per_class: int, seed: int = 0) -> np.ndarray:
    """Up to ``per_class`` (>= 1) row indices of each class (seeded), in class order."""
    if per_class < 1:
        raise AnalysisError(f"--per-class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(LABELS)):
        rows = np.flatnonzero(split.y == c)
        picks.extend(rng.choice(rows, min(per_class, len(rows)), replace=False).tolist())
    return np.asarray(picks, np.int64)


def random_sample(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` sorted random row indices out of ``n_rows`` (all rows if ``n <= 0`` or ``n >= n_rows``)."""
    if n <= 0 or n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, n, replace=False))


def conv_layers(model: Any) -> list[str]:
    """Names of the model's Conv2D layers, input to output."""
    return [l.name for l in model.layers if type(l).__name__ == "Conv2D"]


def map_layers(model: Any) -> list[str]:
    """Names of layers whose output is a [N,H,W,C] feature map (conv, batch norm, activations, pooling, ...)."""
    out = []
    for l in model.layers:
        if type(l).__name__ in ("InputLayer", "Rescaling"):
            continue
        shape = getattr(l, "output", None) is not None and tuple(l.output.shape)
        if shape and len(shape) == 4:
            out.append(l.name)
    return out


def pick_layer(model: Any, name: str | None, kind: str, model_path: Path | str = "") -> str:
    """Validate ``--layer`` against the model's conv layers (``kind="conv"``) or feature-map layers (``"map"``).

    With ``name=None`` the default is the middle conv layer (filters) or the first conv layer (maps).
    """
    choices = conv_layers(model) if kind == "conv" else map_layers(model)
    if not choices:
        what = "Conv2D" if kind == "conv" else "feature-map"
        raise AnalysisError(f"{model_path or model.name} has no {what} layers (a DNN?); this analysis needs a CNN")
    if name is None:
        convs = conv_layers(model) or choices
        return convs[len(convs) // 2] if kind == "conv" else convs[0]
    if name not in choices:
        raise AnalysisError(f"unknown layer {name!r}; choose from {', '.join(choices)}")
    return name


def layer_model(model: Any, layer: str) -> Any:
    """A sub-model from the input to ``layer``'s output (the layer name must exist)."""
    import keras

    return keras.Model(model.inputs[0], model.get_layer(layer).output, name=f"{model.name}_{layer}")


def share_data(a: Target, b: Target) -> None:
    """Let ``b`` reuse ``a``'s data (loaded once) when neither overrides it, both were trained on the same file,
    and both drew their validation rows alike (else b's ``val`` could be a's validation rows, b's training rows)."""
    from fer_train.evaluate import data_path_of, validation_settings

    if a.data is not None or b.data is not None or a.path.resolve() == b.path.resolve():
        return
    if (Path(data_path_of(a.path)).resolve() == Path(data_path_of(b.path)).resolve()
            and validation_settings(a.path) == validation_settings(b.path)):
        b._source = a.source
