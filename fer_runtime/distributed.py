"""Batch inference on Ray Data: the single-process pipeline (:func:`fer_runtime.pipeline.infer_files`) run by a
pool of Ray actors, each holding one :class:`~fer_runtime.predictor.Predictor`.

    import ray
    from fer_runtime.distributed import predict_dataset
    ds = ray.data.read_binary_files("s3://bucket/faces/", include_paths=True)   # or read_images, from_items
    predict_dataset(ds, faces="crop", concurrency=8).write_parquet("s3://bucket/preds/")

The result rows have exactly the columns ``fer-infer`` writes (:func:`fer_runtime.results.columns`): one row per
face, or one error row per unreadable image (never a failed task). Ray is imported only by the functions here,
so ``fer_runtime`` itself works without it (``pip install 'fer-toolkit[ray]'``).
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_runtime.errors import DistributedError, InvalidImageError, first_line, last_line, missing_dependency
from fer_runtime.images import DEFAULT_MAX_PIXELS, decode_image, is_image_path
from fer_runtime.results import is_utf8, printable

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

    from fer_runtime.pipeline import Row
    from fer_runtime.predictor import Predictor

INPUT_COLUMNS = ("image", "bytes", "path")  # what a dataset row may hold, in order of preference
DEFAULT_MAX_RETRIES = 3


def import_ray() -> Any:
    """``ray`` with Ray Data; a :class:`MissingDependencyError` naming the extra if it is not installed, a
    :class:`DistributedError` if it is but cannot be imported."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        if (missing := missing_dependency(e)) is not None:
            raise missing from None
        raise DistributedError(f"Ray cannot be imported ({first_line(e)})") from None
    return ray


def is_uri(path: str) -> bool:
    """True for a filesystem URI pyarrow resolves (``s3://...``, ``gs://...``, ``file://...``)."""
    return "://" in path


def connect(address: str, num_cpus: int | None = None) -> bool:
    """Start or join Ray: ``local`` starts a private local instance (``num_cpus`` CPUs, default all), ``auto``
    joins the cluster running on this machine, anything else is a cluster address (``ray://host:10001`` or a
    GCS ``host:6379``). Returns True if this call started the connection (the caller then calls
    ``ray.shutdown()``); an already initialised Ray is reused.
    """
    ray = import_ray()
    quiet_ray()
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DistributedError(f"cannot start or reach Ray at {address!r}: {' '.join(str(e).split())}") from None
    return True


def quiet_ray() -> None:
    """No Ray Data progress bars or INFO logs on the driver's stderr (fer-infer draws its own progress)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def result_schema(cols: Sequence[str]) -> "pa.Schema":
    """Arrow types of the result columns (every block and Parquet file gets the same schema): int64 box
    fields, strings, float32 for the probabilities, as the model computes them, and float64 for the detector's
    score (:func:`fer_runtime.results.column_kind`)."""
    import pyarrow as pa

    from fer_runtime.results import column_kind

    arrow = {"int": pa.int64(), "text": pa.string(), "float32": pa.float32(), "float64": pa.float64()}
    return pa.schema([pa.field(c, arrow[column_kind(c)]) for c in cols])


def rows_table(rows: Iterable[dict[str, Any]], schema: "pa.Schema") -> "pa.Table":
    """Result rows (dicts keyed by column) as a table of ``schema``."""
    import pyarrow as pa

    rows = list(rows)
    return pa.Table.from_pydict({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema},
                                schema=schema)


def _read_uri(uri: str, max_pixels: int | None) -> np.ndarray:
    """Fetch a file from a pyarrow filesystem URI and decode it (errors as :func:`read_image` types them)."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(path) as f:
            data = f.readall()
    except FileNotFoundError:
        raise InvalidImageError(f"no such file: {uri}") from None
    except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses, ValueError for a bad URI
        raise InvalidImageError(f"cannot read file: {' '.join(str(e).split())}") from None
    return decode_image(data, max_pixels=max_pixels)


def rgb_to_bgr(image: Any) -> np.ndarray:
    """A Ray ``image`` cell as the pipeline's OpenCV channel order: RGB(A), as ``ray.data.read_images`` decodes
    (Pillow), becomes BGR(A); a gray array is returned as it is (so read with ``mode="RGB"`` or ``"L"``: a palette
    image's indices would pass for gray)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return a[:, :, [2, 1, 0, 3][:a.shape[2]]]
    return a


class _PredictBatch:
    """The ``map_batches`` callable: built once per Ray actor (one Predictor), called on each batch."""

    def __init__(self, predictor_kwargs: dict[str, Any], faces: str, detector: Any, max_pixels: int | None) -> None:
        from fer_runtime.predictor import Predictor
        from fer_runtime.results import columns

        quiet_ray()
        self.predictor = Predictor(**predictor_kwargs)
        self.schema = result_schema(columns(self.predictor.labels))
        self.options: dict[str, Any] = {"faces": faces, "max_pixels": max_pixels}
        if detector is not None:
            self.options["detector"] = detector

    def _items(self, batch: dict[str, np.ndarray]) -> list[Any]:
        """One local path or :class:`~fer_runtime.pipeline.Source` per input row."""
        from fer_runtime.pipeline import Source

        n = len(next(iter(batch.values())))
        paths = batch.get("path")
        names = [str(p) for p in paths] if paths is not None else [""] * n
        mp = self.options["max_pixels"]
        if "image" in batch:
            images = batch["image"]
            return [Source(names[i], partial(rgb_to_bgr, images[i])) for i in range(n)]
        if "bytes" in batch:
            blobs = batch["bytes"]
            return [Source(names[i], partial(decode_image, blobs[i], max_pixels=mp)) for i in range(n)]
        if paths is None:
            raise DistributedError(f"the dataset needs one of the columns {', '.join(INPUT_COLUMNS)}, "
                                   f"got {', '.join(batch)}")
        return [Source(p, partial(_read_uri, p, mp)) if is_uri(p) else Path(p) for p in names]

    def __call__(self, batch: dict[str, np.ndarray]) -> "pa.Table":
        import pyarrow as pa

        from fer_runtime.pipeline import infer_files

        items = self._items(batch)
        rows = [r.fields for r in infer_files(self.predictor, items, **self.options)]
        table = rows_table(rows, self.schema)
        if "path" not in batch:  # arrays or bytes without names: no path
            i = self.schema.get_field_index("path")
            table = table.set_column(i, self.schema.field("path"), pa.nulls(len(rows), pa.string()))
        extra = [c for c in batch if c not in INPUT_COLUMNS and np.asarray(batch[c]).ndim == 1]
        if extra:  # carry the input's other columns onto each of its rows
            index = np.cumsum([r.get("face") in (None, 0) for r in rows]) - 1
            for c in extra:
                table = table.append_column(c, pa.array(np.asarray(batch[c])[index]))
        return table


def predict_dataset(ds: "ray.data.Dataset", model: str | None = None, detector: Any = None, faces: str = "auto",
                    batch_size: int = 64, concurrency: int | tuple[int, int] = 1, num_cpus: float = 1,
                    num_gpus: float = 0, *, model_dir: str | os.PathLike[str] | None = None, device: str = "auto",
                    threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    max_retries: int = DEFAULT_MAX_RETRIES) -> "ray.data.Dataset":
    """Add ``fer-infer``'s result columns to a Ray Dataset of images.

    Each row of ``ds`` holds an ``image`` (a decoded array, as from ``ray.data.read_images(..., mode="RGB")``: RGB
    or RGBA, turned into OpenCV's BGR(A) by :func:`rgb_to_bgr`, or gray; without ``mode`` Pillow gives a palette
    PNG as its palette indices and a CMYK JPEG as four channels, which no array can be told apart from gray or
    RGBA), or ``bytes`` (an
    encoded file, as from ``read_binary_files``), or only a ``path`` (a local file, or a pyarrow filesystem URI
    such as ``s3://...``); a ``path`` column, where present, fills the result's path column. The result has one
    row per face (``faces``: auto | detect | crop, as in :func:`fer_runtime.pipeline.infer_files`) or one error
    row per unreadable image, with :func:`fer_runtime.results.columns` first and the input's other 1-D columns
    after them. ``detector`` is passed to :func:`~fer_runtime.pipeline.infer_files` when given.

    ``concurrency`` actors (or a ``(min, max)`` autoscaling range) each build one :class:`Predictor` (``model``,
    ``model_dir``, ``device``; ``threads`` onnxruntime threads, default ``num_cpus``) and reserve ``num_cpus``
    CPUs and ``num_gpus`` GPUs (``num_gpus > 0`` with ``device="auto"`` means CUDA). ``batch_size`` input rows
    go to each call. An actor that dies is restarted and its batch retried up to ``max_retries`` times.
    The dataset is lazy: nothing runs until it is consumed or written.
    """
    from fer_runtime.choices import FACE_MODES

    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_gpus and device == "auto":
        device = "cuda"
    predictor_kwargs = {"model_dir": None if model_dir is None else str(model_dir), "model": model, "device": device,
                        "batch_size": batch_size, "threads": threads or max(1, int(num_cpus))}
    gpu: dict[str, Any] = {"num_gpus": num_gpus} if num_gpus else {}
    ray = import_ray()
    pool = (ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
            if isinstance(concurrency, tuple) else ray.data.ActorPoolStrategy(size=concurrency))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor restarts yet; ray_remote_args is the way until 2.64.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(_PredictBatch, batch_size=batch_size, batch_format="numpy", compute=pool,
                              fn_constructor_kwargs={"predictor_kwargs": predictor_kwargs, "faces": faces,
                                                     "detector": detector, "max_pixels": max_pixels},
                              num_cpus=num_cpus, max_restarts=max_retries, max_task_retries=max_retries, **gpu)


# -- fer-infer --ray --------------------------------------------------------------------------------------------

def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(files, missing)`` as :func:`fer_runtime.inputs.collect_inputs` gives them, where an argument may also be a
    pyarrow filesystem URI of a file or a folder (searched recursively for image suffixes, sorted)."""
    from fer_runtime.inputs import collect_inputs

    if not any(is_uri(a) for a in args):
        files, missing = collect_inputs(args)
        return _utf8_names([str(f) for f in files], missing)
    from pyarrow import fs

    out: list[str] = []
    missing: list[str] = []
    for arg in args:
        if not is_uri(arg):
            local, gone = collect_inputs([arg])
            out += map(str, local)
            missing += gone
            continue
        try:
            filesystem, root = fs.FileSystem.from_uri(arg)
            info = filesystem.get_file_info(root)
            if info.type == fs.FileType.NotFound:
                missing.append(arg)
            elif info.type == fs.FileType.Directory:
                scheme = arg.split("://", 1)[0]
                found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
                out += sorted(f"{scheme}://{f.path}" for f in found
                              if f.type == fs.FileType.File and is_image_path(f.path))
            else:
                out.append(arg)
        except (OSError, ValueError) as e:
            raise DistributedError(f"cannot list {arg}: {' '.join(str(e).split())}") from None
    return _utf8_names(list(dict.fromkeys(out)), missing)


def _utf8_names(files: list[str], missing: list[str]) -> tuple[list[str], list[str]]:
    """``(files, missing)``, or DistributedError for the first name that Arrow's string columns cannot hold."""
    for name in (*files, *missing):
        if not is_utf8(name):
            raise DistributedError(f"{printable(name)}: a file name that is not UTF-8 cannot go through Ray's "
                                   "string columns; rename it, or run without --ray")
    return files, missing


def paths_dataset(paths: Sequence[str], block_rows: int) -> "ray.data.Dataset":
    """A dataset with one ``path`` per row, in order, in blocks of ``block_rows`` rows."""
    ray = import_ray()
    import pyarrow as pa

    step = max(1, block_rows)
    return ray.data.from_arrow([pa.table({"path": pa.array(list(paths[i:i + step]), pa.string())})
                                for i in range(0, max(1, len(paths)), step)])


def block_rows_for(n_files: int, workers: int) -> int:
    """Paths per input block: about 8 blocks per worker so the pool stays busy, at least 16, at most
    4096 (a Parquet output file per block; a killed run redoes at most the blocks in flight)."""
    return min(4096, max(16, -(-n_files // (8 * max(1, workers)))))


def ray_chunks(predictor: "Predictor", files: Sequence[Any], on_file: Callable[[Any], None] | None = None, *,
               workers: int, device: str = "auto", threads: int | None = None, faces: str = "auto",
               max_pixels: int | None = DEFAULT_MAX_PIXELS, saliency_dir: Path | None = None,
               quiet: bool = True, detector: Any = None) -> Iterator[tuple[list["Row"], int]]:
    """:func:`fer_runtime.pipeline.infer_chunks` on Ray: the same ``(rows, files_done)`` stream, computed by
    ``workers`` actors with ``predictor``'s model (the driver's predictor only names it)."""
    if saliency_dir is not None:
        raise DistributedError("--saliency-dir is not supported with --ray")
    paths = [str(f) for f in files]
    if not paths:
        return iter(())
    keep_input_order()
    ds = predict_dataset(paths_dataset(paths, block_rows_for(len(paths), workers)),
                         model=predictor.variant, model_dir=predictor.model_dir, device=device, threads=threads,
                         faces=faces, batch_size=predictor.batch_size, concurrency=workers, max_pixels=max_pixels,
                         detector=detector)
    return ordered_chunks(ds, on_file)


def keep_input_order() -> None:
    """Make the datasets created from now on keep their input order (a dataset copies the current
    ``DataContext`` when it is created, so this must come first)."""
    ray = import_ray()
    ray.data.DataContext.get_current().execution_options.preserve_order = True


def ordered_chunks(ds: "ray.data.Dataset", on_file: Callable[[Any], None] | None = None) -> Iterator[tuple[list["Row"], int]]:
    """Stream a result dataset to the driver as ``(rows, files_done)``, like :func:`fer_runtime.pipeline.infer_chunks`:
    every chunk holds whole files, ``files_done`` counts from the start. The rows come in input order if ``ds``
    was created after :func:`keep_input_order`."""
    from fer_runtime.pipeline import Row

    ray = import_ray()
    done = 0
    carry: list[Row] = []
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            rows = [Row(f) for f in table.to_pylist()]
            starts = [i for i, r in enumerate(rows) if r.fields.get("face") in (None, 0)]
            if not starts:
                carry += rows
                continue
            last = starts[-1]  # the last file of the block may go on in the next one
            complete, carry_next = carry + rows[:last], rows[last:]
            n_new = len(starts) - 1 + (1 if carry else 0)
            carry = carry_next
            if complete:
                done += n_new
                if on_file is not None:
                    for _ in range(n_new):
                        on_file(None)
                yield complete, done
        if carry:
            done += 1
            if on_file is not None:
                on_file(None)
            yield carry, done
    except ray.exceptions.RayError as e:
        raise DistributedError(f"Ray job failed: {last_line(e)}") from None


# -- Parquet output ---------------------------------------------------------------------------------------------

def is_parquet_out(out: str | os.PathLike[str]) -> bool:
    """``--out X.parquet`` or ``X.parquet/`` (a string ending in ``/`` too) means a Parquet dataset folder; any
    other existing folder is not one (the CLI refuses it, rather than fill a folder of the user's with parts)."""
    s = str(out)
    return s.rstrip("/").lower().endswith(".parquet") or s.endswith("/")


def parquet_done(folder: Path) -> tuple[set[str], list[Path]]:
    """The paths whose rows a Parquet output folder already holds, and the files in it that cannot be read
    (written by a worker that was killed mid-file): those are removed by :func:`drop_torn`, their paths redone."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    torn: list[Path] = []
    for f in sorted(folder.glob("*.parquet")):
        if f.name == MISSING_FILE:  # error rows of inputs that did not exist: not done, redone once they do
            continue
        try:
            done.update(p for p in pq.read_table(f, columns=["path"]).column("path").to_pylist() if p is not None)
        except Exception:  # pyarrow raises ArrowInvalid/OSError for a file without its footer
            torn.append(f)
    return done, torn


def parquet_counts(folder: Path) -> tuple[int, int, int]:
    """``(rows, faces, failed files)`` in a Parquet output folder."""
    import pyarrow.parquet as pq

    from fer_runtime.pipeline import Row

    rows = faces = failed = 0
    for f in sorted(folder.glob("*.parquet")):
        t = pq.read_table(f, columns=["label", "error"])
        rows += t.num_rows
        faces += sum(Row({"label": v}).has_face for v in t.column("label").to_pylist())
        failed += sum(Row({"error": e}).failed for e in t.column("error").to_pylist())
    return rows, faces, failed


SETTINGS_FILE = "_fer_infer.json"  # in a Parquet output folder: what made it, checked by --resume
MISSING_FILE = "missing-inputs.parquet"


def predict_to_parquet(predictor: "Predictor", files: Sequence[str], missing: Sequence[str], out: Path,
                       resume: bool, *, workers: int, device: str = "auto", threads: int | None = None,
                       faces: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       detector: Any = None) -> tuple[int, int]:
    """Write the result rows of ``files`` (and an error row per ``missing`` argument) as a Parquet dataset in the
    folder ``out``, each worker writing its own files. With ``resume`` the paths already in ``out`` are skipped
    (files a killed worker left unreadable are removed first and redone). Returns ``(files done now, files
    skipped)``; :func:`parquet_counts` gives the totals.
    """
    import json

    import pyarrow.parquet as pq

    from fer_runtime.atomic import atomic_path, atomic_write
    from fer_runtime.pipeline import NO_SUCH_FILE, error_row
    from fer_runtime.results import columns
    from fer_runtime.resume import run_settings, settings_difference

    cols = columns(predictor.labels)
    settings = {"columns": cols, **run_settings(predictor, faces=faces, detector=detector, max_pixels=max_pixels)}
    if out.exists() and not out.is_dir():
        raise DistributedError(f"--out {out} is a file; a Parquet output is a folder")
    marker = out / SETTINGS_FILE
    existing = sorted(out.glob("*.parquet")) if out.is_dir() else []
    if existing and not resume:
        raise DistributedError(f"{out} already holds {len(existing)} Parquet file(s): pass --resume to continue "
                               "that run, or choose another --out")
    if resume and marker.exists():
        try:
            was = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DistributedError(f"cannot resume {out}: {marker} is unreadable ({first_line(e)}); "
                                   "choose another --out") from None
        if not isinstance(was, dict):
            raise DistributedError(f"cannot resume {out}: {marker} is damaged (not a JSON object); choose another --out")
        difference = settings_difference(was, settings)
        if difference:
            raise DistributedError(f"cannot resume {out}: {difference}")
    done, torn = parquet_done(out) if existing else (set(), [])
    for f in torn:
        f.unlink()
    out.mkdir(exist_ok=True)
    atomic_write(marker, json.dumps(settings, indent=1) + "\n")
    schema = result_schema(cols)
    # inputs missing in an earlier run of this output keep their error rows unless they exist now; new ones are added
    before = (pq.read_table(out / MISSING_FILE, columns=["path"]).column("path").to_pylist()
              if (out / MISSING_FILE).exists() else [])
    now = set(files)
    still = list(dict.fromkeys([m for m in before if m not in now] + [m for m in missing if m not in done]))
    if still and still != before:
        with atomic_path(out / MISSING_FILE) as tmp:
            pq.write_table(rows_table((error_row(m, NO_SUCH_FILE).fields for m in still), schema), tmp)
    elif before and not still:
        (out / MISSING_FILE).unlink()
    todo = [f for f in files if f not in done]
    if todo:
        ds = predict_dataset(paths_dataset(todo, block_rows_for(len(todo), workers)),
                             model=predictor.variant, model_dir=predictor.model_dir, device=device, threads=threads,
                             faces=faces, batch_size=predictor.batch_size, concurrency=workers,
                             max_pixels=max_pixels, detector=detector)
        ray = import_ray()
        try:
            ds.write_parquet(str(out.resolve()))
        except ray.exceptions.RayError as e:
            raise DistributedError(f"Ray job failed: {last_line(e)}") from None
    return len(todo), len(files) - len(todo)
