"""Loaders for the three FER2013 layouts: Kaggle CSV(.gz), course train/test CSVs, and class folders.

Every loader returns uint8 images shaped [N, 48, 48, 1] and int64 labels (-1 when unlabelled).
Malformed input raises :class:`DataFormatError` naming the file, the line and the reason;
nothing is silently dropped.
"""
from __future__ import annotations

import csv
import gzip
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_runtime.errors import FerError, first_line
from fer_runtime.labels import IMAGE_SIZE, LABELS, label_index

PIXELS = IMAGE_SIZE * IMAGE_SIZE
USAGES = ("Training", "PublicTest", "PrivateTest")


class DataFormatError(FerError, ValueError):
    """A data file is malformed; the message names the file, the line and the reason."""


@dataclass
class Split:
    """Images [N,48,48,1] uint8, labels [N] int64 (-1 = unlabelled), and row ids."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(self.x[idx], self.y[idx], self.ids[idx])


# Splits that hold training rows (a course train.csv's "all" is train + val); every other split is scored on.
TRAINING_SPLITS = ("train", "Training", "all")


@dataclass
class DataSource:
    """Named splits of one source. ``train`` and ``val`` always exist; Kaggle CSVs add the tests."""

    path: Path
    layout: str
    splits: dict[str, Split] = field(default_factory=dict)
    validation: str = ""

    @property
    def fixed_validation(self) -> bool:
        """True when the validation rows are a split the data names (Kaggle's PublicTest), not rows drawn by
        ``stratified_split`` from a seed (which differ between runs with different seeds)."""
        return self.validation in self.splits

    def __getitem__(self, name: str) -> Split:
        if name not in self.splits:
            raise KeyError(f"split {name!r} not in {self.path} (has: {', '.join(self.splits)})")
        return self.splits[name]


def _open_text(path: Path) -> str:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read ({first_line(e, named=True)}); truncated or not a CSV?") from None
    if not text.strip():
        raise DataFormatError(f"{path}: file is empty")
    return text


def _parse_one(path: Path, line: int, s: str) -> np.ndarray:
    """Slow, exact parse of one pixel string; used to name the reason once the fast path fails."""
    toks = s.split()
    if len(toks) != PIXELS:
        raise DataFormatError(f"{path}:{line}: expected {PIXELS} pixel values, found {len(toks)}")
    for t in toks:
        if not (t.isascii() and t.isdigit()):  # "²".isdigit() is True, int("²") fails
            raise DataFormatError(f"{path}:{line}: non-numeric pixel value {t!r}")
        if int(t) > 255:
            raise DataFormatError(f"{path}:{line}: pixel value {t} outside 0..255")
    return np.array(toks, dtype=np.uint8)


def parse_pixels(path: Path, lines: list[int], strings: list[str]) -> np.ndarray:
    """Parse many space-separated pixel strings at C speed; fall back to a per-row check on error."""
    n = len(strings)
    if n == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    spaces = np.fromiter((s.strip().count(" ") for s in strings), dtype=np.int64, count=n)
    for i in np.flatnonzero(spaces != PIXELS - 1):  # odd spacing or wrong count: check exactly
        _parse_one(path, lines[i], strings[i])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            flat = np.fromstring(" ".join(strings), dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError):
            flat = None
    if flat is None or flat.size != n * PIXELS or flat.min() < 0 or flat.max() > 255:
        for ln, s in zip(lines, strings):
            _parse_one(path, ln, s)
        raise DataFormatError(f"{path}: pixel data malformed")  # unreachable unless whitespace oddities
    return flat.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 1)


def read_csv_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, line numbers) of a CSV file (``.gz`` too, a UTF-8 BOM allowed) with the ``required`` columns;
    DataFormatError naming the line for a missing column, a row with another field count or a truncated last row."""
    text = _open_text(path)
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataFormatError(f"{path}:1: no header row") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(f"{path}:1: header {header} lacks column(s) {missing}")
    rows, lines = [], []
    start = reader.line_num + 1  # the line the next row begins on (a quoted field may span lines)
    try:
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise DataFormatError(f"{path}:{start}: expected {len(header)} fields, found {len(row)} (truncated row?)")
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:  # e.g. an unclosed quote swallowing the rest of the file
        raise DataFormatError(f"{path}:{start}: {e} (an unclosed quote?)") from None
    if not rows:
        raise DataFormatError(f"{path}: header only, no data rows")
    if not text.endswith("\n") and len(rows[-1][header.index(required[-1])].split()) == 0:
        raise DataFormatError(f"{path}:{lines[-1]}: last row is truncated")
    return header, rows, lines


def _labels(path: Path, col: list[str], lines: list[int]) -> np.ndarray:
    out = np.empty(len(col), np.int64)
    for i, (v, ln) in enumerate(zip(col, lines)):
        try:
            out[i] = label_index(v)
        except KeyError as e:
            raise DataFormatError(f"{path}:{ln}: {e.args[0]}") from None
    return out


def load_kaggle_csv(path: str | Path) -> DataSource:
    """Load ``fer2013.csv`` or ``.csv.gz`` (emotion,pixels,Usage). Validation is PublicTest."""
    path = Path(path)
    header, rows, lines = read_csv_rows(path, ("emotion", "pixels", "Usage"))
    ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("Usage")
    y = _labels(path, [r[ie] for r in rows], lines)
    x = parse_pixels(path, lines, [r[ip] for r in rows])
    usage = np.array([r[iu].strip() for r in rows])
    unknown = np.flatnonzero(~np.isin(usage, USAGES))
    if unknown.size:
        i = int(unknown[0])
        raise DataFormatError(f"{path}:{lines[i]}: unknown Usage {str(usage[i])!r}; expected one of {', '.join(USAGES)}")
    ids = np.arange(len(rows))
    splits = {u: Split(x[usage == u], y[usage == u], ids[usage == u]) for u in USAGES}
    splits["train"], splits["val"] = splits["Training"], splits["PublicTest"]
    return DataSource(path, "kaggle", splits, validation="PublicTest")


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``fraction`` of each class in val, reproducible from ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val.append(idx[: int(round(len(idx) * fraction))])
    v = np.sort(np.concatenate(val))
    t = np.setdiff1d(np.arange(len(y)), v)
    return t, v


def _with_validation(src: DataSource, full: Split, validate: float, seed: int) -> DataSource:
    t, v = stratified_split(full.y, validate, seed)
    src.splits["all"] = full
    src.splits["train"], src.splits["val"] = full.subset(t), full.subset(v)
    src.validation = f"stratified {validate:g} (seed {seed})"
    return src


def load_course_train(path: str | Path, validate: float = 0.1, seed: int = 1234) -> DataSource:
    """Load the course ``train.csv`` (label,feature) with a stratified validation split."""
    path = Path(path)
    header, rows, lines = read_csv_rows(path, ("label", "feature"))
    il, ifeat = header.index("label"), header.index("feature")
    y = _labels(path, [r[il] for r in rows], lines)
    x = parse_pixels(path, lines, [r[ifeat] for r in rows])
    return _with_validation(DataSource(path, "course"), Split(x, y, np.arange(len(y))), validate, seed)


def load_course_test(path: str | Path) -> Split:
    """Load the unlabelled course ``test.csv`` (id,feature); labels are -1."""
    path = Path(path)
    header, rows, lines = read_csv_rows(path, ("id", "feature"))
    iid, ifeat = header.index("id"), header.index("feature")
    ids = []
    for r, ln in zip(rows, lines):
        try:
            ids.append(int(r[iid]))
        except ValueError:
            raise DataFormatError(f"{path}:{ln}: id {r[iid]!r} is not an integer") from None
    x = parse_pixels(path, lines, [r[ifeat] for r in rows])
    return Split(x, np.full(len(rows), -1, np.int64), np.array(ids, np.int64))


def _read_gray48(p: Path) -> np.ndarray:
    """The 48x48 uint8 face of an image file, exactly as the runtime's Predictor sees the same file."""
    from fer_runtime.errors import InvalidImageError
    from fer_runtime.images import face_pixels, read_image  # OpenCV only when folders are read

    try:
        return face_pixels(read_image(p))
    except InvalidImageError as e:
        raise DataFormatError(f"{p}: {e}") from None


def load_image_folders(root: str | Path, validate: float = 0.1, seed: int = 1234) -> DataSource:
    """Load ``root/<class>/*.png`` where <class> is a name (``angry``) or index (``0``).

    If ``root`` has ``train``/``test`` subfolders (the common Kaggle image release), ``train``
    is split for validation and ``test`` becomes the ``test`` split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a directory")
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" in sub:
        src = _with_validation(DataSource(root, "folders"), _read_class_dirs(sub["train"]), validate, seed)
        if "test" in sub:
            src.splits["test"] = _read_class_dirs(sub["test"])
        return src
    return _with_validation(DataSource(root, "folders"), _read_class_dirs(root), validate, seed)


def _read_class_dirs(root: Path) -> Split:
    from fer_runtime.images import is_image_path  # the runtime's list of image suffixes

    xs, ys = [], []
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not dirs:
        raise DataFormatError(f"{root}: no class subfolders (expected e.g. {LABELS[0].lower()}/ or 0/)")
    for d in dirs:
        try:
            c = label_index(d.name)
        except KeyError as e:
            raise DataFormatError(f"{d}: {e.args[0]}") from None
        for f in sorted(d.iterdir()):
            if f.is_file() and is_image_path(f):
                xs.append(_read_gray48(f))
                ys.append(c)
    if not xs:
        raise DataFormatError(f"{root}: no images found in class folders")
    x = np.stack(xs)[..., None]
    return Split(x, np.array(ys, np.int64), np.arange(len(ys)))


def load_source(path: str | Path, validate: float = 0.1, seed: int = 1234) -> DataSource:
    """Detect the layout of ``path`` and load it (Kaggle CSV, course train.csv, or class folders)."""
    path = Path(path)
    if path.is_dir():
        return load_image_folders(path, validate, seed)
    cols = [c.strip() for c in next(csv.reader([_head(path)]))]  # as read_csv_rows reads it: quotes allowed
    if "Usage" in cols and "emotion" in cols:
        return load_kaggle_csv(path)
    if "label" in cols and "feature" in cols:
        return load_course_train(path, validate, seed)
    if "id" in cols and "feature" in cols:
        raise DataFormatError(f"{path}:1: this is an unlabelled test.csv (id,feature); use it with predict or self-train --unlabelled")
    raise DataFormatError(f"{path}:1: unrecognised header {cols}; expected emotion,pixels,Usage or label,feature")


def _head(path: Path) -> str:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8-sig") as f:  # type: ignore[operator]
            line = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from None
    if not line.strip():
        raise DataFormatError(f"{path}: file is empty")
    return line.strip()
