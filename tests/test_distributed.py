"""fer-infer --ray and fer_runtime.distributed on a real local Ray (2 CPUs, started once for this module).

The Ray rows must be the single-process rows: same files, order, labels, error rows and probabilities
(the CSV is byte-identical; Parquet holds the float32 values themselves). A driver killed mid-run
(SIGKILL of a real subprocess) loses nothing: --resume completes the Parquet folder with each path once.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from fer_runtime.cli import app  # noqa: E402
from fer_runtime.distributed import SETTINGS_FILE, DistributedError, parquet_done, predict_dataset, predict_to_parquet  # noqa: E402,E501
from fer_runtime.manifest import MANIFEST_NAME  # noqa: E402
from fer_runtime.pipeline import NO_SUCH_FILE  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fer2013_small.csv.gz"
CORRUPT = "zz_corrupt.png"
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def ray_session(model_dir: Path):
    """One local Ray for the module, shut down after it."""
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")  # a loaded machine starts the raylet slowly
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _faces(n: int) -> list[np.ndarray]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f))]
    return [np.array(r["pixels"].split(), np.uint8).reshape(48, 48) for r in rows]


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 FER2013 crops as PNG (some in a subfolder), a corrupt PNG and a truncated one."""
    d = tmp_path_factory.mktemp("crops")
    (d / "sub").mkdir()
    for i, face in enumerate(_faces(60)):
        cv2.imencode(".png", face)[1].tofile(d / ("sub" if i % 3 == 0 else ".") / f"{i:03d}.png")
    (d / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = (d / "001.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    return d


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "-q"])
    return r.exit_code, r.output


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def plain_csv(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run, the reference."""
    out = tmp_path_factory.mktemp("plain") / "plain.csv"
    code, output = _run(str(crops), "--faces", "crop", "--out", str(out))
    assert code == 1, output  # the two broken files
    return out


def test_ray_csv_is_the_single_process_csv(crops: Path, plain_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray.csv"
    code, output = _run(str(crops), "--faces", "crop", "--ray", "local", "--workers", "2", "--out", str(out))
    assert code == 1, output  # failed files count as in the plain run
    assert out.read_bytes() == plain_csv.read_bytes()
    rows = _csv(out)
    assert len(rows) == 62 and sum(bool(r["label"]) for r in rows) == 60
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {CORRUPT, "truncated.png"} and all("not a readable image" in e for e in errors.values())


def test_ray_parquet_holds_the_same_rows(crops: Path, plain_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds"  # not named .parquet: the trailing slash asks for the folder
    code, output = _run(str(crops), "--faces", "crop", "--ray", "local", "--out", f"{out}/")
    assert code == 1, output
    table = pq.ParquetDataset(out).read()
    got = {(r["path"], r["face"]): r for r in table.to_pylist()}
    want = _csv(plain_csv)
    assert len(got) == len(want) == table.num_rows
    probs = [c for c in want[0] if c.startswith("p_")]
    assert table.schema.field(probs[0]).type == "float"  # float32, as the model computes them
    for w in want:
        g = got[(w["path"], int(w["face"]) if w["face"] else None)]
        assert (g["label"] or "", g["error"] or "") == (w["label"], w["error"])
        if w["label"]:
            assert np.allclose([g[c] for c in probs], [float(w[c]) for c in probs], atol=5e-7, rtol=0)
    from fer_runtime.distributed import parquet_counts
    from fer_runtime.pipeline import NO_FACE

    assert parquet_counts(out) == (len(want), sum(w["label"] != "" for w in want),
                                   sum(w["error"] not in ("", NO_FACE) for w in want))
    assert len(want) > sum(w["label"] != "" for w in want)  # the folder has rows without a face
    # A second run into the same folder must not mix two runs' files.
    code, output = _run(str(crops), "--faces", "crop", "--ray", "local", "--out", f"{out}/")
    assert code == 2 and "--resume" in output


def test_the_result_table_keeps_every_value_as_the_csv_writes_it() -> None:
    """--ray's CSV goes through Arrow tables: the detector's float64 scores must come back to the same 6 decimals
    (a float32 column changed some), and the model's float32 probabilities are float32 already."""
    from fer_runtime import LABELS
    from fer_runtime.distributed import result_schema, rows_table
    from fer_runtime.results import encode_row, video_columns

    cols = video_columns(LABELS)
    rng = np.random.default_rng(0)
    rows = [{"path": f"{i}.jpg", "face": 0, "x": 1, "y": 2, "w": 3, "h": 4, "source": "detected", "score": score,
             "label": LABELS[0], "confidence": float(np.float32(score)), "frame": i, "timestamp_ms": i * 33.3667,
             **{c: float(v) for c, v in zip([c for c in cols if c.startswith("p_")], rng.random(7, np.float32))}}
            for i, score in enumerate(np.linspace(0.5, 1.0, 1001))]
    back = rows_table(rows, result_schema(cols)).to_pylist()
    assert [encode_row("csv", cols, r) for r in back] == [encode_row("csv", cols, r) for r in rows]


def test_predict_dataset_on_arrays_and_bytes(crops: Path, predictor) -> None:
    faces = _faces(12)
    ds = ray.data.from_items([{"image": f, "id": i} for i, f in enumerate(faces)])
    rows = predict_dataset(ds, faces="crop", batch_size=5, model_dir=predictor.model_dir).take_all()
    assert [r["id"] for r in rows] == list(range(12))  # the input's other columns ride along
    assert all(r["path"] is None and r["error"] is None for r in rows)
    want = predictor.predict(faces)
    got = np.array([[r[c] for c in rows[0] if c.startswith("p_")] for r in rows], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)

    files = [crops / "001.png", crops / CORRUPT]
    blobs = ray.data.from_items([{"bytes": f.read_bytes(), "path": f.name} for f in files])
    rows = predict_dataset(blobs, faces="crop", model_dir=predictor.model_dir).take_all()
    assert [r["path"] for r in rows] == ["001.png", CORRUPT]
    assert rows[0]["label"] and rows[0]["error"] is None
    assert rows[1]["label"] is None and "not a readable image" in rows[1]["error"]


def test_image_column_is_rgb_as_ray_read_images_decodes_it(predictor) -> None:
    face, other = _faces(5)[::4]
    # Another face in the blue channel: a channel swap changes the gray face's structure, not only
    # its brightness (which the preprocessing's contrast stretch would undo).
    bgr = np.dstack([other, face, face])
    rgb = bgr[:, :, ::-1]
    ds = ray.data.from_items([{"image": rgb}, {"image": np.dstack([rgb, np.full_like(face, 255)])}])
    rows = predict_dataset(ds, faces="crop", model_dir=predictor.model_dir).take_all()
    got = np.array([[r[c] for c in rows[0] if c.startswith("p_")] for r in rows], np.float32)
    want = predictor.predict([bgr])[0]  # what fer-infer gives for the same photo read from a file
    np.testing.assert_allclose(got, [want, want], atol=1e-6)
    assert not np.allclose(predictor.predict([rgb])[0], want, atol=0.02)  # the swap would be seen


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 FER2013 crops as PNG."""
    src = tmp_path_factory.mktemp("many")
    for i, face in enumerate(_faces(400)):
        cv2.imencode(".png", face)[1].tofile(src / f"{i:03d}.png")
    return src


@pytest.fixture(scope="module")
def many_plain_csv(many: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("many_plain") / "plain.csv"
    code, output = _run(str(many), "--faces", "crop", "--out", str(out))
    assert code == 0, output
    return out


def test_ray_csv_keeps_input_order_over_many_blocks(many: Path, many_plain_csv: Path, tmp_path: Path) -> None:
    """16 blocks of 25 paths on 2 workers (small batches finish out of order): the CSV is still the single-process one."""
    out = tmp_path / "ray.csv"
    code, output = _run(str(many), "--faces", "crop", "--ray", "local", "--workers", "2", "--batch-size", "4",
                        "--out", str(out))
    assert code == 0, output
    assert out.read_bytes() == many_plain_csv.read_bytes()


def test_parquet_resume_after_a_killed_driver(many: Path, many_plain_csv: Path, tmp_path: Path) -> None:
    """SIGKILL a real fer-infer --ray driver once it has written a file, add a torn file as a killed worker
    would leave, then --resume: every path exactly once, the same rows as the single-process run."""
    src = many
    out = tmp_path / "preds.parquet"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "fer_runtime.cli", str(src), "--faces", "crop", "--ray", address, "--workers", "1",
           "--batch-size", "1", "--out", f"{out}/", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        # a complete (readable) file, not just one being written: on a loaded machine the first file can
        # still be open when the kill lands
        while not (out.is_dir() and parquet_done(out)[0]) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(3)  # the cluster reaps the dead job's actors
    done, _ = parquet_done(out)
    assert 0 < len(done) < 400, len(done)  # killed mid-run
    first = sorted(out.glob("*.parquet"))[0]
    (out / "torn.parquet").write_bytes(first.read_bytes()[:100])  # no footer: unreadable

    code, output = _run(str(src), "--faces", "crop", "--ray", "local", "--out", str(out), "--resume")
    assert code == 0, output
    assert not (out / "torn.parquet").exists()
    rows = pq.ParquetDataset(out).read().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in src.glob("*.png"))  # each once

    want = {r["path"]: r for r in _csv(many_plain_csv)}
    for r in rows:
        w = want[r["path"]]
        assert r["label"] == w["label"] and abs(r["confidence"] - float(w["confidence"])) <= 5e-7


def _actor_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Ray actor's process in /proc")
def test_a_killed_worker_is_replaced_and_nothing_is_lost(crops: Path, plain_csv: Path, predictor) -> None:
    """SIGKILL the inference actor while the dataset streams: Ray restarts it, retries its batch, and every
    file still gets exactly its single-process row."""
    from fer_runtime.distributed import keep_input_order, ordered_chunks, paths_dataset

    want = _csv(plain_csv)
    paths = [r["path"] for r in want]
    keep_input_order()
    ds = predict_dataset(paths_dataset(paths, 4), faces="crop", batch_size=1, model_dir=predictor.model_dir)
    rows, killed = [], []
    for chunk, _ in ordered_chunks(ds):
        rows += [r.fields for r in chunk]
        if not killed:
            killed = _actor_pids()
            assert killed, "no Ray inference actor found"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    assert killed and not set(killed) & set(_actor_pids())  # the new actor is another process
    assert [r["path"] for r in rows] == paths
    for r, w in zip(rows, want):
        assert (r["label"] or "") == w["label"] and (r["error"] or "") == w["error"]


@pytest.mark.parametrize("marker, message", [("{not json", "is unreadable"), ("[1, 2]", "not a JSON object"),
                                             ('{"model": "other"}', "columns was None in the interrupted run")])
def test_parquet_resume_refuses_a_damaged_or_foreign_settings_file(predictor, tmp_path: Path, marker: str,
                                                                   message: str) -> None:
    out = tmp_path / "preds.parquet"
    out.mkdir()
    (out / SETTINGS_FILE).write_text(marker)
    with pytest.raises(DistributedError, match=message) as ei:
        predict_to_parquet(predictor, [], [], out, resume=True, workers=1)
    assert "\n" not in str(ei.value) and str(ei.value).startswith(f"cannot resume {out}")


def test_an_existing_plain_folder_as_out_is_refused_not_filled_with_parquet_parts(crops: Path, tmp_path: Path) -> None:
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, output = _run(str(crops), "--faces", "crop", "--ray", "local", "--workers", "1", "--out", str(mine))
    assert code == 2 and "is a folder (a Parquet output folder is named X.parquet)" in output, output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_bad_detector_setting_is_one_line_before_ray_starts(crops: Path, model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "models"
    shutil.copytree(model_dir, bad)
    raw = json.loads((bad / MANIFEST_NAME).read_text())
    raw["detectors"]["blazeface"]["decoding"]["min_score"] = 1.5
    (bad / MANIFEST_NAME).write_text(json.dumps(raw))
    out = tmp_path / "preds.csv"
    code, output = _run(str(crops), "--model-dir", str(bad), "--ray", "local", "--workers", "1", "--out", str(out))
    assert code == 2 and "min_score must be in (0, 1), got 1.5" in output and "Traceback" not in output, output
    assert not out.exists()


def test_parquet_resume_keeps_the_rows_of_inputs_missing_before(predictor, tmp_path: Path) -> None:
    out = tmp_path / "preds.parquet"
    gone1, gone2 = str(tmp_path / "gone1.png"), str(tmp_path / "gone2.png")
    predict_to_parquet(predictor, [], [gone1], out, resume=False, workers=1)
    predict_to_parquet(predictor, [], [gone1, gone2], out, resume=True, workers=1)
    rows = pq.read_table(out).to_pylist()
    assert [(r["path"], r["error"]) for r in rows] == [(gone1, NO_SUCH_FILE), (gone2, NO_SUCH_FILE)]
    # gone1 exists now: a resume classifies it and drops its stale error row (it was counted as done)
    cv2.imencode(".png", _faces(1)[0])[1].tofile(gone1)
    assert predict_to_parquet(predictor, [gone1], [gone2], out, resume=True, workers=1) == (1, 0)
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["path"])
    assert [(r["path"], r["label"] is not None, r["error"]) for r in rows] == [(gone1, True, None),
                                                                               (gone2, False, NO_SUCH_FILE)]
    Path(gone2).write_bytes(Path(gone1).read_bytes())  # the last one appears: no error rows are left
    assert predict_to_parquet(predictor, [gone1, gone2], [], out, resume=True, workers=1) == (1, 1)
    assert [r["error"] for r in pq.read_table(out).to_pylist()] == [None, None]
