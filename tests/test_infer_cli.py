"""End-to-end tests of ``fer-infer`` (typer CliRunner) on a folder of good, odd and broken files. No TensorFlow."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fer_runtime import LABELS
from fer_runtime.cli import app
from fer_runtime.manifest import read_manifest
from fer_runtime.overlay import FIGURE_SHAPE
from fer_runtime.results import columns

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
COLUMNS = ["path", "face", "x", "y", "w", "h", "source", "score", "label", "confidence",
           *(f"p_{l.lower()}" for l in LABELS), "saliency_png", "error"]
runner = CliRunner()


def _png(path: Path, image: np.ndarray) -> None:
    cv2.imencode(path.suffix, image)[1].tofile(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good images, a truncated jpg, a text file named .png, RGBA, 16-bit, 6000x4000 and a non-ASCII name."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "sub").mkdir()
    for name in ("happy_0.png", "sad_0.png"):
        shutil.copy(EXAMPLES / name, d / name)
    shutil.copy(EXAMPLES / "photo_two_faces.jpg", d / "sub" / "photo.jpg")
    jpg = (EXAMPLES / "photo_one_face.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (d / "notes.png").write_text("this is not an image\n")
    face = cv2.imread(str(EXAMPLES / "surprise_0.png"), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.cvtColor(cv2.resize(face, (96, 96)), cv2.COLOR_GRAY2BGR)
    _png(d / "rgba.png", np.dstack([bgr, np.full((96, 96), 255, np.uint8)]))
    _png(d / "sixteen.png", cv2.resize(face, (64, 64)).astype(np.uint16) * 257)
    photo = cv2.imread(str(EXAMPLES / "photo_two_faces.jpg"))
    big = cv2.resize(photo, (6000, 4000), interpolation=cv2.INTER_LINEAR)
    cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tofile(d / "big.jpg")
    _png(d / "visage_été.png", cv2.imread(str(EXAMPLES / "angry_0.png")))
    (d / "readme.txt").write_text("skipped: not an image suffix")
    return d


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _by_name(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(Path(r["path"]).name, []).append(r)
    return out


@pytest.fixture(scope="module")
def run(model_dir: Path, inputs: Path, tmp_path_factory: pytest.TempPathFactory):
    """One full run over the folder, shared by the tests below (the 6000x4000 image is the slow part)."""
    out_dir = tmp_path_factory.mktemp("out")
    out, sal = out_dir / "preds.csv", out_dir / "saliency"
    res = runner.invoke(app, [str(inputs), "--out", str(out), "--saliency-dir", str(sal), "--model-dir",
                              str(model_dir), "--device", "cpu", "--threads", "1", "--batch-size", "4"])
    return res, out, sal


def test_exit_code_and_columns(run) -> None:
    res, out, _ = run
    assert res.exit_code == 1, res.output
    with open(out, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert COLUMNS == columns(LABELS)
    assert "failed" in res.stderr


def test_rows(run, inputs: Path) -> None:
    _, out, _ = run
    rows = _csv(out)
    by = _by_name(rows)
    assert "readme.txt" not in by  # folders contribute image suffixes only
    assert set(by) == {"happy_0.png", "sad_0.png", "photo.jpg", "truncated.jpg", "notes.png", "rgba.png",
                       "sixteen.png", "big.jpg", "visage_été.png"}
    assert [r["path"] for r in rows] == sorted([r["path"] for r in rows], key=lambda p: p)  # stable order
    for name in ("happy_0.png", "sad_0.png", "rgba.png", "sixteen.png", "visage_été.png"):
        (r,) = by[name]
        assert r["error"] == "" and r["label"] in LABELS and r["face"] == "0"
        probs = [float(r[c]) for c in COLUMNS if c.startswith("p_")]
        assert abs(sum(probs) - 1) < 1e-4 and float(r["confidence"]) == pytest.approx(max(probs), abs=1e-6)
        assert r["label"] == LABELS[int(np.argmax(probs))]
    assert by["happy_0.png"][0]["source"] in ("whole", "detected")
    (bad,) = by["notes.png"]
    assert "not a readable image" in bad["error"] and bad["label"] == "" and bad["p_happy"] == ""
    (trunc,) = by["truncated.jpg"]
    assert "truncated" in trunc["error"] and trunc["label"] == "" and trunc["p_happy"] == ""  # refused, not half-read
    for name, size in (("photo.jpg", (640, 400)), ("big.jpg", (6000, 4000))):
        faces = by[name]
        assert [r["face"] for r in faces] == ["0", "1"] and {r["source"] for r in faces} == {"detected"}
        for r in faces:
            x, y, w, h = (int(r[k]) for k in "xywh")
            assert 0 <= x and 0 <= y and x + w <= size[0] and y + h <= size[1] and w > size[0] // 10
    assert int(by["big.jpg"][0]["x"]) == pytest.approx(int(by["photo.jpg"][0]["x"]) * 6000 / 640, rel=0.15)


def test_atomic_output_and_saliency_figures(run) -> None:
    _, out, sal = run
    assert sorted(p.name for p in out.parent.iterdir()) == ["preds.csv", "saliency"]  # no temp file left
    rows = _csv(out)
    faces = [r for r in rows if r["label"]]
    pngs = sorted(sal.rglob("*.png"))
    assert len(pngs) == len(faces)
    assert (sal / "visage_été_face0.png").exists() and (sal / "big_face1.png").exists()
    assert (sal / "sub" / "photo_face1.png").exists()  # the input's folder below the common root is kept
    assert sorted(Path(r["saliency_png"]) for r in faces) == pngs  # each face row names its figure
    assert all(r["saliency_png"] == "" for r in rows if not r["label"])
    for p in pngs:
        fig = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)
        assert fig.shape == (*FIGURE_SHAPE, 3)


def test_jsonl_and_faces_crop(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.out"
    res = runner.invoke(app, [str(EXAMPLES / "happy_0.png"), str(EXAMPLES / "photo_two_faces.jpg"), "--out",
                              str(out), "--format", "jsonl", "--faces", "crop", "--model-dir", str(model_dir), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(list(r) == COLUMNS for r in rows)
    assert [r["source"] for r in rows] == ["whole", "whole"] and rows[1]["w"] == 640 and rows[1]["h"] == 400
    assert rows[0]["error"] is None and isinstance(rows[0]["p_happy"], float)


def test_faces_detect_and_globs(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    res = runner.invoke(app, [str(EXAMPLES / "photo_*.jpg"), str(EXAMPLES / "sad_0.png"), "--faces", "detect",
                              "--out", str(out), "--model-dir", str(model_dir), "-q"])
    assert res.exit_code == 0, res.output  # "no face detected" is a result, not a failure
    by = _by_name(_csv(out))
    assert set(by) == {"photo_one_face.jpg", "photo_two_faces.jpg", "sad_0.png"}
    assert len(by["photo_two_faces.jpg"]) == 2 and by["photo_one_face.jpg"][0]["source"] == "detected"
    sad = by["sad_0.png"][0]
    assert sad["source"] == "detected" and sad["label"] in LABELS and sad["error"] == ""  # the default detector finds it


def _summary_matches(rows: list[dict[str, str]], stderr: str) -> bool:
    """Whether fer-infer's last line gives the face and failure counts of these rows."""
    from fer_runtime.pipeline import NO_FACE

    faces = sum(r["label"] != "" for r in rows)
    failed = sum(r["error"] not in ("", NO_FACE) for r in rows)
    assert faces < len(rows) and failed  # rows without a face make the counts tell apart
    return stderr.splitlines()[-1].startswith(f"{faces} face(s) from ") and f", {failed} failed ->" in stderr


def test_the_summary_counts_the_rows_written(run, model_dir: Path, tmp_path: Path) -> None:
    """The last line's face and failure counts match the rows, to a file (counted by the resumable writer) and to
    stdout (counted as they stream)."""
    res, out, _ = run
    assert _summary_matches(_csv(out), res.stderr), res.stderr
    res = runner.invoke(app, [str(EXAMPLES), str(tmp_path / "gone.png"), "--model-dir", str(model_dir),
                              "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert _summary_matches(list(csv.DictReader(io.StringIO(res.stdout))), res.stderr), res.stderr


def test_stdout_when_no_out(model_dir: Path) -> None:
    res = runner.invoke(app, [str(EXAMPLES / "fear_0.png"), "--model-dir", str(model_dir), "-q"])
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and rows[0]["label"] in LABELS


def test_a_file_name_that_is_not_utf8(model_dir: Path, tmp_path: Path) -> None:
    """Its bytes are written as \\xNN escapes (CSV and JSON lines); a video of such a name, which OpenCV's binding
    would crash on, is a one-line error."""
    import os

    bad = tmp_path / os.fsdecode(b"bad\xffname.png")
    shutil.copy(EXAMPLES / "happy_0.png", bad)
    named = tmp_path / os.fsdecode(b"crop\xfe.dat")  # named, without an image suffix: probed as a video first
    shutil.copy(EXAMPLES / "happy_0.png", named)
    for out in (tmp_path / "p.csv", tmp_path / "p.jsonl"):
        res = runner.invoke(app, [str(bad), str(named), "--out", str(out), "--model-dir", str(model_dir),
                                  "--model", "fast", "-q"])
        assert res.exit_code == 0, res.output
        text = out.read_text(encoding="utf-8")  # valid UTF-8 throughout
        rows = _csv(out) if out.suffix == ".csv" else [json.loads(line) for line in text.splitlines()]
        assert sorted(Path(r["path"]).name for r in rows) == ["bad\\xffname.png", "crop\\xfe.dat"]
        assert all(r["label"] in LABELS for r in rows)
    res = runner.invoke(app, [str(bad), "--out", str(tmp_path / "r.csv"), "--ray", "local"])  # Arrow cannot hold it
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"error: {tmp_path / 'bad'}\\xffname.png: a file name that is not UTF-8 cannot go through Ray's string "
        "columns; rename it, or run without --ray"], res.output
    clip = tmp_path / os.fsdecode(b"v\xff.mp4")
    clip.write_bytes(b"not opened")
    res = subprocess.run([sys.executable, "-c", "from fer_runtime.cli import main; main()", str(clip), "--out",
                          str(tmp_path / "v.csv"), "--model-dir", str(model_dir)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: " + str(tmp_path / "v\\xff.mp4") + ": OpenCV cannot open a file whose name is not UTF-8; rename it"]


def test_missing_path_is_an_error_row(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    res = runner.invoke(app, [str(EXAMPLES / "fear_0.png"), str(tmp_path / "absent.png"), "--out", str(out),
                              "--model-dir", str(model_dir), "-q"])
    assert res.exit_code == 1
    by = _by_name(_csv(out))
    assert by["absent.png"][0]["error"] == "no such file or directory" and by["fear_0.png"][0]["label"]


def _fatal(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_fatal_errors_exit_2_and_keep_the_old_output(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    out.write_text("old\n")
    good = str(EXAMPLES / "happy_0.png")
    assert "does not exist" in _fatal(runner.invoke(app, [good, "--out", str(out), "--model-dir", str(tmp_path / "no")]))
    corrupt = Path(shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("__pycache__")))
    m = read_manifest(corrupt)
    f = corrupt / m.variants[m.default_variant].forward
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x55
    f.write_bytes(bytes(data))
    line = _fatal(runner.invoke(app, [good, "--out", str(out), "--model-dir", str(corrupt)]))
    assert m.files[f.name].sha256 in line and "expected" in line
    (tmp_path / "empty").mkdir()
    assert "no image files" in _fatal(runner.invoke(app, [str(tmp_path / "empty"), "--out", str(out)]))
    assert "no such file" in _fatal(runner.invoke(app, [str(tmp_path / "nothing*.png"), "--out", str(out)]))
    assert "variants" in _fatal(runner.invoke(app, [good, "--out", str(out), "--model", "tiny", "--model-dir",
                                                    str(model_dir)]))
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "m", "preds.csv"]


def test_help_does_not_import_the_heavy_modules() -> None:
    code = ("import sys\nfrom fer_runtime.cli import main\nsys.argv = ['fer-infer', '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "print('HEAVY', sorted(m for m in ('onnxruntime', 'cv2', 'numpy', 'tensorflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--saliency-dir" in r.stdout and "HEAVY []" in r.stdout


def test_every_value_written_is_of_its_columns_kind(model_dir: Path, inputs: Path, tmp_path: Path) -> None:
    """results.column_kind (what the Parquet schema is built from) agrees with the values the pipeline writes."""
    from fer_runtime.results import column_kind

    out = tmp_path / "p.jsonl"
    r = runner.invoke(app, [str(inputs), "--out", str(out), "--saliency-dir", str(tmp_path / "s"), "-q"])
    assert r.exit_code == 1, r.output  # some inputs are broken on purpose
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    seen = set()
    for row in rows:
        for c, v in row.items():
            if v is None:
                continue
            seen.add(c)
            kind = column_kind(c)
            ok = {"int": isinstance(v, int) and not isinstance(v, bool), "text": isinstance(v, str),
                  "float32": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "float64": isinstance(v, (int, float)) and not isinstance(v, bool)}[kind]
            assert ok, (c, kind, v)
    assert seen == set(columns(LABELS))  # every column held a value somewhere
