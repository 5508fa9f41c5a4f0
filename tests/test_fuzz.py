"""Fuzz corpus (tests/fuzz_corpus.py, fixed seed): every input gets exactly one row, a prediction when it decodes,
a typed error otherwise; nothing crashes, hangs, or prints codec noise. No TensorFlow."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fuzz_corpus import Case, build_corpus  # noqa: E402

from fer_runtime.images import DEFAULT_MAX_PIXELS  # noqa: E402

TIMEOUT = 300  # seconds for one subprocess run over the whole corpus; a hang fails the test
NOISE = ("libpng", "Corrupt JPEG", "Premature end", "[ WARN", "[ERROR", "TIFFRead", "Traceback")
# what the row's error must say for the entries that are not files
NOT_A_FILE = {"dangling": "dangling symbolic link", "loop": "symbolic link loop", "directory": "is a directory",
              "fifo": "not a regular file"}

LIBRARY_RUN = r"""
import json, sys
from pathlib import Path
from fer_runtime import Predictor
from fer_runtime.errors import FerError
from fer_runtime.images import read_image
from fer_runtime.inputs import collect_inputs
from fer_runtime.pipeline import infer_files

files, missing = collect_inputs([sys.argv[1]])
reads = {}
for f in files:
    try:
        read_image(f)
        reads[f.name] = "ok"
    except FerError as e:
        reads[f.name] = type(e).__name__
    except Exception as e:  # anything untyped is a failure of the test
        reads[f.name] = "UNTYPED " + type(e).__name__ + ": " + str(e)
p = Predictor(sys.argv[2], device="cpu", threads=1, batch_size=16)
rows = [r.fields | {"failed": r.failed} for r in infer_files(p, files, faces=sys.argv[3])]
json.dump({"files": [f.name for f in files], "missing": missing, "reads": reads, "rows": rows}, sys.stdout)
"""


def _decodable(path: Path, case: Case) -> bool:
    """The oracle: OpenCV decodes the file by itself and it is within the pixel limit."""
    if case.kind in ("huge", *NOT_A_FILE):
        return False
    data = np.fromfile(path, np.uint8)
    if data.size == 0:
        return False
    image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    return image is not None and image.size > 0 and image.shape[0] * image.shape[1] <= DEFAULT_MAX_PIXELS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case], dict[str, bool]]:
    folder = tmp_path_factory.mktemp("fuzz") / "corpus"
    cases = build_corpus(folder)
    cv2.utils.logging.setLogLevel(0)
    expect = {c.name: _decodable(folder / c.name, c) for c in cases}
    return folder, cases, expect


def test_corpus_covers_every_kind(corpus) -> None:
    _, cases, expect = corpus
    kinds = {c.kind for c in cases}
    assert kinds >= {"valid", "truncated", "bitflip", "random", "magic", "huge", "odd", "name", "dangling", "loop",
                     "directory", "fifo"}
    assert len(cases) >= 100
    assert 0 < sum(expect.values()) < len(cases)  # both outcomes are exercised
    assert all(expect[c.name] for c in cases if c.kind in ("valid", "odd", "name"))
    # where the outcome is known without a decoder: random bytes and foreign or zeroed magic numbers are no image
    assert not any(expect[c.name] for c in cases if c.kind in ("random", "magic"))


def _check_rows(rows: list[dict], cases: list[Case], expect: dict[str, bool]) -> None:
    """Exactly one row per input; a prediction iff the input decodes; a one-line error otherwise."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(Path(r["path"]).name, []).append(r)
    assert sorted(by_name) == sorted(c.name for c in cases), "an input was dropped or invented"
    for c in cases:
        (row,) = by_name[c.name]  # exactly one row (--faces crop: one face per image)
        if expect[c.name]:
            assert row.get("label") not in (None, ""), (c, row)
            assert not row.get("error"), (c, row)
            probs = np.array([float(row[k]) for k in row if k.startswith("p_")])
            assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-3, (c, row)
        else:
            assert row.get("label") in (None, ""), (c, row)
            assert row["error"] and "\n" not in row["error"], (c, row)
        if c.kind in NOT_A_FILE:
            assert NOT_A_FILE[c.kind] in row["error"], (c, row)
        if c.kind == "huge":
            assert "too large" in row["error"] or "not a readable image" in row["error"], (c, row)


def test_fer_infer_on_the_corpus(corpus, model_dir: Path, tmp_path: Path) -> None:
    folder, cases, expect = corpus
    out = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "fer_runtime.cli", str(folder), "--out", str(out), "--faces", "crop",
           "--model-dir", str(model_dir), "--device", "cpu", "--threads", "1", "--batch-size", "16", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 1, res.stderr  # some inputs failed, the run completed
    assert res.stderr == "", f"decoder noise or an error on stderr:\n{res.stderr}"
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    _check_rows(rows, cases, expect)
    assert not list(tmp_path.glob("preds.csv.*")), "the partial file or progress record was left behind"


def test_fer_infer_detect_mode_and_verbose(corpus, model_dir: Path, tmp_path: Path) -> None:
    """--faces auto runs the detector on every decodable input; --verbose lets the codecs talk again."""
    folder, cases, expect = corpus
    out = tmp_path / "preds.jsonl"
    cmd = [sys.executable, "-m", "fer_runtime.cli", str(folder), "--out", str(out), "--model-dir", str(model_dir),
           "--device", "cpu", "--threads", "1", "-q", "--verbose"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 1, res.stderr
    assert any(n in res.stderr for n in NOISE[:5]), "--verbose should show the codecs' own messages"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    names = {Path(r["path"]).name for r in rows}
    assert names == {c.name for c in cases}
    for c in cases:
        _check_auto_rows([r for r in rows if Path(r["path"]).name == c.name], c, expect[c.name])


def _check_auto_rows(mine: list[dict], case: Case, decodable: bool) -> None:
    """--faces auto: a decodable input gives one row per face found (or one row without a face and without an
    error); anything else gives exactly one error row."""
    assert len(mine) >= 1, case
    if decodable:
        assert all(not r.get("error") and (r.get("label") is not None or r.get("face") is None) for r in mine), (case, mine)
    else:
        assert len(mine) == 1 and mine[0]["error"] and mine[0].get("label") is None, (case, mine)


@pytest.mark.parametrize("faces", ["crop", "auto"])
def test_library_path_on_the_corpus(corpus, model_dir: Path, faces: str) -> None:
    """collect_inputs + read_image + infer_files in a fresh interpreter: typed errors only, and one row per input."""
    folder, cases, expect = corpus
    res = subprocess.run([sys.executable, "-c", LIBRARY_RUN, str(folder), str(model_dir), faces],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not any(n in res.stderr for n in NOISE), f"decoder noise from the library:\n{res.stderr[-3000:]}"
    got = json.loads(res.stdout)
    assert got["missing"] == []
    assert sorted(got["files"]) == sorted(c.name for c in cases)
    for c in cases:
        assert got["reads"][c.name] in ("ok", "InvalidImageError", "ImageTooLargeError"), (c, got["reads"][c.name])
        assert (got["reads"][c.name] == "ok") == expect[c.name], (c, got["reads"][c.name])
    if faces == "crop":
        _check_rows(got["rows"], cases, expect)
    else:
        assert {Path(r["path"]).name for r in got["rows"]} == {c.name for c in cases}
        for c in cases:
            _check_auto_rows([r for r in got["rows"] if Path(r["path"]).name == c.name], c, expect[c.name])


def test_unreadable_file_gets_an_error_row(model_dir: Path, tmp_path: Path) -> None:
    """A file the process may not read gets a 'permission denied' row. Root reads any file whatever its mode, so
    as root the run drops the two capabilities that let it (setpriv's bounding set: no CAP_DAC_OVERRIDE, no
    CAP_DAC_READ_SEARCH) and then meets the mode-000 file like any other user."""
    import shutil

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: no honest way to make a file unreadable")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "images" / "sad_0.png", tmp_path / "readable.png")
    shutil.copy(tmp_path / "readable.png", tmp_path / "secret.png")
    os.chmod(tmp_path / "secret.png", 0o000)
    out = tmp_path / "preds.csv"
    cmd = [*prefix, sys.executable, "-m", "fer_runtime.cli", str(tmp_path), "--out", str(out), "--faces", "crop",
           "--model-dir", str(model_dir), "--device", "cpu", "--threads", "1", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 1, res.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["readable.png", "secret.png"]
    assert rows["readable.png"]["label"] and not rows["readable.png"]["error"]
    assert rows["secret.png"]["error"].startswith("permission denied") and not rows["secret.png"]["label"]
