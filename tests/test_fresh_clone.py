"""What a new user hit on a fresh clone (issue 13, item 6), one test per defect. No TensorFlow."""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import fer_runtime
from fer_runtime import FerError, InvalidVideoError, Predictor, VideoReader
from fer_runtime.cli import app
from fer_runtime.inputs import collect_inputs

from no_tf import block_imports  # noqa: E402  (tests/no_tf.py)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
VIDEO = ROOT / "examples" / "video" / "two_faces.mp4"
runner = CliRunner()
BLOCK = block_imports("""\
        if name == 'fer_runtime.models':  # as after a non-editable install, run from the clone's root
            raise ModuleNotFoundError("No module named 'fer_runtime.models'", name=name)""")


# -- the runtime works from the checkout's root ---------------------------------------------------
def _clone(tmp_path: Path, with_models: bool) -> Path:
    """A checkout's layout: fer_runtime/ next to models/ (a link to the shipped folder)."""
    clone = tmp_path / ("clone" if with_models else "bare")
    shutil.copytree(ROOT / "fer_runtime", clone / "fer_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    if with_models:
        (clone / "models").symlink_to(ROOT / "models", target_is_directory=True)
    return clone


def _run_in(clone: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FER_MODEL_DIR"}
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=clone, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_runtime_finds_the_checkouts_models_when_the_source_folder_shadows_the_package(tmp_path: Path) -> None:
    clone = _clone(tmp_path, with_models=True)
    r = _run_in(clone, f"""
import fer_runtime
from fer_runtime import Predictor, analyze, default_model_dir
assert fer_runtime.__file__.startswith({str(clone)!r}), fer_runtime.__file__  # the source folder, not the venv's
p = Predictor(device='cpu')
print(default_model_dir())
print(p.predict({str(EXAMPLES / 'happy_0.png')!r}).shape, len(analyze({str(EXAMPLES / 'photo_two_faces.jpg')!r})))
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [str(clone / "models"), "(1, 7) 2"]

    bare = _clone(tmp_path, with_models=False)  # neither installed models nor a models/ folder: a clear error
    r = _run_in(bare, "import fer_runtime\ntry:\n    fer_runtime.Predictor()\n"
                      "except fer_runtime.ModelNotFoundError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "no packaged models" in r.stdout and str(bare / "models") in r.stdout and "FER_MODEL_DIR" in r.stdout


# -- InvalidVideoError is exported and documented ------------------------------------------------------
def test_invalid_video_error_is_exported_and_every_error_is_in_the_readme(tmp_path: Path) -> None:
    assert issubclass(InvalidVideoError, FerError) and "InvalidVideoError" in fer_runtime.__all__
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    with pytest.raises(fer_runtime.InvalidVideoError):
        VideoReader(bad)
    runtime = README.split("## Runtime", 1)[1].split("\n## ", 1)[0]
    errors = [n for n in fer_runtime.__all__ if n.endswith("Error") and n not in ("FerRuntimeError",)]
    assert "InvalidVideoError" in errors
    assert [n for n in errors if f"`{n}`" not in runtime] == []
    import inspect

    from fer_runtime import errors as defined  # every error class the runtime defines is exported
    assert sorted(n for n, c in vars(defined).items() if inspect.isclass(c) and issubclass(c, Exception)
                  and c.__module__ == defined.__name__ and n not in fer_runtime.__all__) == []


README = (ROOT / "README.md").read_text(encoding="utf-8")


# -- saliency maps: maximum 1 after resizing, zeros for a blank image ----------------------------------
def test_saliency_maxima_are_one_at_every_size_and_a_blank_image_gives_zeros(predictor: Predictor) -> None:
    face = cv2.imread(str(EXAMPLES / "surprise_0.png"), cv2.IMREAD_GRAYSCALE)
    sizes = [(48, 48), (100, 80), (31, 57), (640, 480), (20, 20)]
    ims = [cv2.resize(face, s, interpolation=cv2.INTER_CUBIC) for s in sizes]
    maps = predictor.saliency(ims)
    assert [m.shape for m in maps] == [(h, w) for w, h in sizes]
    assert [float(m.max()) for m in maps] == [1.0] * len(sizes) and all(m.min() >= 0 for m in maps)
    blank = predictor.saliency([np.zeros((120, 90), np.uint8), np.full((48, 48, 3), 200, np.uint8), face])
    assert [float(m.max()) for m in blank] == [0.0, 0.0, 1.0]


# -- saliency figures: one per input path, and a column that links each row to it ----------------------
def test_saliency_png_names_are_unique_per_path_and_in_a_column(model_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for sub, src in (("a", "happy_0.png"), ("e", "sad_0.png"), ("e/deeper", "fear_0.png")):
        (inputs / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / src, inputs / sub / "happy_0.png")
    out, sal = tmp_path / "p.jsonl", tmp_path / "sal"
    res = runner.invoke(app, [str(inputs), "--out", str(out), "--saliency-dir", str(sal), "--model-dir",
                              str(model_dir), "--model", "fast", "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    figures = {Path(r["path"]).relative_to(inputs).as_posix(): r["saliency_png"] for r in rows}
    assert figures == {f"{d}/happy_0.png": str(sal / d / "happy_0_face0.png") for d in ("a", "e", "e/deeper")}
    assert sorted(sal.rglob("*.png")) == sorted(map(Path, figures.values()))
    # each figure shows its own face: the three differ
    pixels = [cv2.imread(f) for f in figures.values()]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])


# -- hidden files ---------------------------------------------------------------------------------------
def test_hidden_files_are_skipped_in_folders_but_taken_when_named(tmp_path: Path) -> None:
    for rel in ("a.png", ".hidden.png", ".cache/b.png", "sub/.c.png", "sub/d.png", ".git/objects/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "happy_0.png", tmp_path / rel)
    files, missing = collect_inputs([str(tmp_path)])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.png", "sub/d.png"] and missing == []
    files, _ = collect_inputs([str(tmp_path / ".hidden.png"), str(tmp_path / ".cache")])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [".hidden.png", ".cache/b.png"]


def test_a_folder_that_cannot_be_listed_gets_an_error_row(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Not passed over in silence (``os.walk`` skips what it cannot list unless told otherwise)."""
    for rel in ("a.png", "locked/b.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "happy_0.png", tmp_path / rel)
    real = os.scandir

    def scandir(path="."):  # what a folder without read permission does (tests may run as root)
        if Path(path) == tmp_path / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, missing = collect_inputs([str(tmp_path)])
    assert files == [tmp_path / "a.png", tmp_path / "locked"] and missing == []
    out = tmp_path / "preds.csv"
    res = runner.invoke(app, [str(tmp_path), "--out", str(out), "--model-dir", str(model_dir), "--model", "fast", "-q"])
    assert res.exit_code == 1, res.output  # some input failed
    with open(out, newline="", encoding="utf-8") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["a.png"]["label"] and rows["locked"]["error"] and not rows["locked"]["label"]


# -- --version ------------------------------------------------------------------------------------------
def test_version_matches_the_package() -> None:
    res = runner.invoke(app, ["--version"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.exit_code == 0 and res.stdout.strip() == f"fer-infer {version}" == f"fer-infer {fer_runtime.__version__}"


# -- --out into a missing folder ---------------------------------------------------------------------
def test_out_creates_its_folder_like_saliency_dir(model_dir: Path, tmp_path: Path) -> None:
    out, sal = tmp_path / "new" / "deep" / "p.csv", tmp_path / "figs" / "deep"
    res = runner.invoke(app, [str(EXAMPLES / "angry_0.png"), "--out", str(out), "--saliency-dir", str(sal),
                              "--model-dir", str(model_dir), "--model", "fast", "-q"])
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["label"] and Path(row["saliency_png"]).parent == sal
    video_out = tmp_path / "v" / "deep" / "frames.csv"
    res = runner.invoke(app, [str(VIDEO), "--out", str(video_out), "--every", "40", "--model-dir", str(model_dir),
                              "--model", "fast", "-q"])
    assert res.exit_code == 0, res.output
    assert video_out.read_text().startswith("frame,")
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, [str(EXAMPLES / "angry_0.png"), "--out", str(tmp_path / "file" / "p.csv"), "-q"])
    assert res.exit_code == 2 and res.stderr.startswith("error: cannot create the folder of --out")


# -- a folder with only a video ---------------------------------------------------------------------
def test_a_folder_of_videos_says_videos_are_passed_directly(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    shutil.copy(VIDEO, tmp_path / "clips" / "a.mp4")
    res = runner.invoke(app, [str(tmp_path / "clips"), "-q"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no image files" in res.stderr and f"passed directly: fer-infer {tmp_path / 'clips' / 'a.mp4'}" in res.stderr
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, [str(tmp_path / "empty"), "-q"])
    assert res.exit_code == 2 and "no image files" in res.stderr and "passed directly" not in res.stderr


# -- .gitignore and the README's example accuracy --------------------------------------------------------
def test_gitignore_covers_the_first_commands_outputs() -> None:
    first = re.search(r"```bash\n(python3 -m venv \.venv-infer.*?)\n```", README).group(1)
    ignored = set((ROOT / ".gitignore").read_text().split())
    for out in (".venv-infer/", "preds.csv", "saliency/"):
        assert out.rstrip("/") in first and out in ignored


def test_the_readme_states_the_example_crops_accuracy(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    res = runner.invoke(app, [str(EXAMPLES), "--out", str(out), "--model-dir", str(model_dir), "-q"])
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as f:
        crops = [r for r in csv.DictReader(f) if r["source"] == "whole"]
    right = sum(Path(r["path"]).name.split("_")[0] == r["label"].lower() for r in crops)
    stated = re.search(r"\*\*(\d+) of the (\d+) crops\*\*", README)
    assert stated, "the README states the example crops' accuracy as **K of the N crops**"
    assert (int(stated.group(1)), int(stated.group(2))) == (right, len(crops)) and len(crops) == 7
