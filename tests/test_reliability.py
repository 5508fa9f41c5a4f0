"""Faults the runtime must survive: huge images, SIGKILL mid-run, --resume, a file-size limit, and one Predictor
shared by 8 threads. No TensorFlow."""
from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fuzz_corpus import EXAMPLES, _png_header_only, png_of_zeros  # noqa: E402

from fer_runtime.errors import ImageTooLargeError, InvalidImageError  # noqa: E402
from fer_runtime.images import DEFAULT_MAX_PIXELS, decode_image, read_image  # noqa: E402
from fer_runtime.resume import ResumableWriter, ResumeError, partial_path, progress_path  # noqa: E402
from fer_runtime.results import columns  # noqa: E402

TIMEOUT = 300
FACES = sorted(EXAMPLES.glob("*_0.png"))


def _cli(model_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fer_runtime.cli", *args, "--model-dir", str(model_dir), "--device", "cpu",
            "--threads", "1", "-q"]


_PEAK = """
import atexit, runpy, sys
report, module = sys.argv[1], sys.argv[2]
def _peak():  # VmHWM: this process's own peak RSS (ru_maxrss would include the forking parent's pages)
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(report, "w") as f:
        f.write(hwm)
atexit.register(_peak)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _run_measured(cmd: list[str], **kw) -> tuple[int, float, str]:
    """Run ``cmd`` (``python -m module ...``); (exit code, peak RSS in MB of that process alone, stderr)."""
    assert cmd[1] == "-m", cmd
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "peak_kb"
        proc = subprocess.run([cmd[0], "-c", _PEAK, str(report), cmd[2], *cmd[3:]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=TIMEOUT, **kw)
        return proc.returncode, int(report.read_text()) / 1024, proc.stderr.decode()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- huge images ------------------------------------------------------------------------------------------
def test_huge_png_is_refused_before_decoding(model_dir: Path, tmp_path: Path) -> None:
    """A valid 20000x20000 PNG (400 MP, 1.7 MB on disk) gets a one-line 'too large' row; the process never
    holds its pixels (decoding it would take 400 MB more than the ~150 MB of the runtime)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(png_of_zeros(20000, 20000))
    shutil.copy(FACES[0], tmp_path / "in" / "face.png")
    out = tmp_path / "preds.csv"
    code, peak_mb, err = _run_measured(_cli(model_dir, str(tmp_path / "in"), "--out", str(out)))
    assert code == 1 and err == "", err
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["huge.png"]["error"].startswith("image too large") and not rows["huge.png"]["label"]
    assert rows["face.png"]["label"]
    assert peak_mb < 450, f"peak RSS {peak_mb:.0f} MB: the image was decoded"
    # the measure sees a decode: with the limit off the same run holds the 400 MB of pixels
    code, decoded_mb, _ = _run_measured(_cli(model_dir, str(tmp_path / "in" / "huge.png"), "--max-pixels", "0",
                                             "--faces", "crop", "--out", str(tmp_path / "decoded.csv")))
    assert decoded_mb > 450, decoded_mb


def test_pixel_limit_is_settable(model_dir: Path, tmp_path: Path) -> None:
    face = FACES[0].read_bytes()  # 48x48 = 2304 pixels
    assert decode_image(face).shape == (48, 48)
    with pytest.raises(ImageTooLargeError, match="48x48 = 2,304 pixels, the limit is 2,000"):
        decode_image(face, max_pixels=2000)
    assert read_image(FACES[0], max_pixels=2304).shape == (48, 48)
    # a header claiming 15000x15000 (225 MP, above the default): refused by default, decoded (and found truncated)
    # when the CLI's --max-pixels is raised above it
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.png").write_bytes(_png_header_only(15000, 15000))
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "in" / "big.png")
    with pytest.raises(InvalidImageError, match="not a readable image"):  # the library's limit, not Pillow's
        read_image(tmp_path / "in" / "big.png", max_pixels=300_000_000)
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own limit is back after the probe
    for limit, expect in ((None, "image too large"), ("300000000", "not a readable image"),
                          ("0", "not a readable image"), ("1000", "image too large")):
        out = tmp_path / f"preds_{limit}.csv"
        extra = ["--max-pixels", limit] if limit is not None else []
        res = subprocess.run(_cli(model_dir, str(tmp_path / "in"), "--out", str(out), *extra), capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert res.returncode == 1, res.stderr
        (row,) = _rows(out)
        assert row["error"].startswith(expect), (limit, row)
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485  # Pillow's own error threshold


def test_a_figure_write_that_fails_leaves_the_previous_figure(tmp_path: Path) -> None:
    """``write_image`` under a file-size limit (``ulimit -f``): an error, and the old file whole, no temp file."""
    fig = tmp_path / "a_face0.png"
    fig.write_bytes(b"the previous figure")
    code = ("import resource, signal, sys\n"
            "import numpy as np\n"
            "from fer_runtime.images import write_image\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # ~200 KB as PNG\n"
            "try:\n"
            "    write_image(sys.argv[1], noise)\n"
            "except OSError as e:\n"
            "    sys.exit(f'refused: {e.strerror}')\n")
    res = subprocess.run([sys.executable, "-c", code, str(fig)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("refused: File too large"), res.stderr
    assert fig.read_bytes() == b"the previous figure" and [p.name for p in tmp_path.iterdir()] == [fig.name]


# -- killed and resumed runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 small face images (copies of the 7 example crops, flipped/shifted so that they differ)."""
    import cv2

    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(15)
    crops = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in FACES]
    for i in range(400):
        im = np.roll(crops[i % len(crops)], int(rng.integers(-3, 4)), axis=1)
        cv2.imwrite(str(d / f"face_{i:04d}.png"), im[:, ::-1] if i % 2 else im)
    return d


def _kill_when(proc: subprocess.Popen, progress: Path, at_least: int, n: int) -> int:
    """SIGKILL ``proc`` once its progress record counts ``at_least`` complete inputs (but not all ``n``)."""
    deadline = time.time() + TIMEOUT
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads(progress.read_text())["inputs_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= at_least:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed; give it more inputs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done < n
    return done


def test_sigkill_leaves_the_previous_output_and_resume_completes_it(model_dir: Path, many: Path,
                                                                     tmp_path: Path) -> None:
    n = len(list(many.iterdir()))
    ref = tmp_path / "reference.csv"
    res = subprocess.run(_cli(model_dir, str(many), "--out", str(ref), "--faces", "crop"), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr

    out = tmp_path / "preds.csv"
    out.write_text("previous,complete\nfile,1\n")
    before = out.read_bytes()
    cmd = _cli(model_dir, str(many), "--out", str(out), "--faces", "crop", "--batch-size", "8")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = _kill_when(proc, progress_path(out), 40, n)
    assert out.read_bytes() == before, "a killed run touched the previous output"
    assert partial_path(out).exists() and progress_path(out).exists()

    # a second kill, this time during the resumed run, then a resume to the end
    proc = subprocess.Popen([*cmd, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done2 = _kill_when(proc, progress_path(out), done + 80, n)
    assert done2 > done and out.read_bytes() == before
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert not partial_path(out).exists() and not progress_path(out).exists()

    got, want = _rows(out), _rows(ref)
    assert [r["path"] for r in got] == [r["path"] for r in want]  # every input once, in order
    assert [r["label"] for r in got] == [r["label"] for r in want]
    p = [c for c in got[0] if c.startswith("p_")]
    # the batches differ between the runs, so the last float bits may too; the CSV keeps 6 decimals
    np.testing.assert_allclose(np.array([[float(r[c]) for c in p] for r in got]),
                               np.array([[float(r[c]) for c in p] for r in want]), atol=2e-6)


def test_sigkill_without_previous_output_leaves_none(model_dir: Path, many: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    proc = subprocess.Popen(_cli(model_dir, str(many), "--out", str(out), "--batch-size", "8"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, progress_path(out), 30, len(list(many.iterdir())))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl.partial", "preds.jsonl.progress.json"]


def test_resume_refuses_other_inputs_or_settings(model_dir: Path, many: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    cmd = _cli(model_dir, str(many), "--out", str(out), "--faces", "crop", "--batch-size", "8")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, progress_path(out), 20, len(list(many.iterdir())))
    partial = partial_path(out).read_bytes()
    for other in (_cli(model_dir, str(FACES[0]), "--out", str(out), "--faces", "crop", "--resume"),
                  [*cmd[:cmd.index("crop")], "auto", *cmd[cmd.index("crop") + 1:], "--resume"],
                  [*cmd, "--max-pixels", "1000000", "--resume"]):
        res = subprocess.run(other, capture_output=True, text=True, timeout=TIMEOUT)
        assert res.returncode == 2 and res.stderr.startswith("error: cannot resume"), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert partial_path(out).read_bytes() == partial and not out.exists()
    # where faces are detected, the detector is a setting too
    out2 = tmp_path / "detected.csv"
    cmd2 = _cli(model_dir, str(many), "--out", str(out2), "--faces", "auto", "--batch-size", "8")
    proc = subprocess.Popen(cmd2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, progress_path(out2), 20, len(list(many.iterdir())))
    res = subprocess.run([*cmd2, "--detector", "haar", "--resume"], capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 2 and res.stderr.startswith("error: cannot resume") and "detector" in res.stderr
    res = subprocess.run(_cli(model_dir, str(many), "--resume"), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 2 and "--resume needs --out" in res.stderr


def test_a_resumed_run_names_the_saliency_figures_as_an_uninterrupted_one(model_dir: Path, many: Path,
                                                                            tmp_path: Path) -> None:
    """``a.bmp`` ... ``a.webp`` share a stem, so all but the first get ``a_<n>``: a resumed run that reads only
    the rest of the inputs must neither rename nor overwrite a figure of the run it continues."""
    import cv2

    from fer_runtime.images import IMAGE_EXTENSIONS

    d = tmp_path / "in"
    d.mkdir()
    crop = cv2.imread(str(FACES[0]), cv2.IMREAD_GRAYSCALE)
    for ext in sorted(IMAGE_EXTENSIONS):  # first in the input order: the kill comes after 1 of them
        cv2.imwrite(str(d / f"a{ext}"), crop)
    for f in sorted(many.iterdir())[:20]:
        shutil.copy(f, d / f"z_{f.name}")
    figures = {}
    for name, interrupted in (("whole", False), ("resumed", True)):
        out, sal = tmp_path / f"{name}.csv", tmp_path / f"{name}_saliency"
        cmd = _cli(model_dir, str(d), "--out", str(out), "--faces", "crop", "--batch-size", "1",
                   "--saliency-dir", str(sal))
        if interrupted:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert _kill_when(proc, progress_path(out), 1, 20 + len(IMAGE_EXTENSIONS)) < len(IMAGE_EXTENSIONS)
            cmd = [*cmd, "--resume"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        assert res.returncode == 0, res.stderr
        figures[name] = {r["path"]: Path(r["saliency_png"]).relative_to(sal) for r in _rows(out)}
        assert sorted(p.relative_to(sal) for p in sal.rglob("*.png")) == sorted(figures[name].values())
    assert figures["resumed"] == figures["whole"]
    assert len(set(figures["whole"].values())) == len(figures["whole"]) == 20 + len(IMAGE_EXTENSIONS)


def test_resumable_writer_drops_rows_after_the_last_commit(tmp_path: Path) -> None:
    """Rows written but not committed when the process died are not in the resumed file (no torn last row)."""
    out, cols = tmp_path / "preds.csv", columns(["A", "B"])
    inputs = ["a.png", "b.png", "c.png"]
    w = ResumableWriter(out, "csv", cols, inputs, {"faces": "crop"}).__enter__()
    w.write({"path": "a.png", "label": "A", "p_a": 0.9, "p_b": 0.1})
    w.commit(1)
    w.write({"path": "b.png", "label": "B", "p_a": 0.2, "p_b": 0.8})
    w._fh.write(b'"c.png,half a ro')  # the torn tail of a write the kill interrupted  # type: ignore[union-attr]
    w._fh.close()  # the process dies: no commit, no __exit__  # type: ignore[union-attr]
    assert not out.exists()
    with ResumableWriter(out, "csv", cols, inputs, {"faces": "crop"}, resume=True) as w2:
        assert w2.resumed and w2.inputs_done == 1
        for name in inputs[w2.inputs_done:]:
            w2.write({"path": name, "error": "x"}, failed=True)
        w2.commit(3)
    assert [r["path"] for r in _rows(out)] == inputs
    assert w2.state.rows == 3 and w2.state.failed == 2
    with pytest.raises(ResumeError, match="inputs differ"):
        ResumableWriter(tmp_path / "x.csv", "csv", cols, ["z.png"], {}).__enter__().commit(0)
        ResumableWriter(tmp_path / "x.csv", "csv", cols, ["y.png"], {}, resume=True).__enter__()


@pytest.mark.parametrize("field, value, message", [
    ("settings", 5, "'settings' must be an object, not 5"),
    ("bytes", "12", "'bytes' must be an integer"),
    ("inputs_done", "1", "'inputs_done' must be an integer"),
    ("bytes", -1, "'bytes' must not be negative"),
    (None, None, "unreadable"),  # not JSON at all
])
def test_a_damaged_progress_record_is_a_one_line_resume_error(tmp_path: Path, field, value, message: str) -> None:
    out, cols, inputs = tmp_path / "preds.csv", columns(["A", "B"]), ["a.png", "b.png"]
    w = ResumableWriter(out, "csv", cols, inputs, {"faces": "crop"}).__enter__()
    w.write({"path": "a.png", "label": "A", "p_a": 0.9, "p_b": 0.1})
    w.commit(1)
    w._fh.close()  # the process dies  # type: ignore[union-attr]
    record = json.loads(progress_path(out).read_text())
    if field is None:
        progress_path(out).write_text('{"inputs_sha256": "ab", "n_inp')
    else:
        progress_path(out).write_text(json.dumps({**record, field: value}))
    with pytest.raises(ResumeError, match=message) as ei:  # not a TypeError from truncate() or a slice
        ResumableWriter(out, "csv", cols, inputs, {"faces": "crop"}, resume=True).__enter__()
    assert "\n" not in str(ei.value) and "run without --resume" in str(ei.value)


def test_file_size_limit_is_a_one_line_error_and_keeps_the_previous_output(model_dir: Path, many: Path,
                                                                           tmp_path: Path) -> None:
    """RLIMIT_FSIZE (what ``ulimit -f`` sets), with SIGXFSZ ignored so that write() fails with EFBIG."""
    out = tmp_path / "preds.csv"
    out.write_text("previous,complete\n")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    res = subprocess.run(_cli(model_dir, str(many), "--out", str(out), "--faces", "crop"), capture_output=True,
                         text=True, timeout=TIMEOUT, preexec_fn=limit)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "File too large" in lines[0], lines
    assert out.read_text() == "previous,complete\n"


# -- one Predictor, many threads ----------------------------------------------------------------------------
def test_one_predictor_shared_by_8_threads_matches_serial_calls(model_dir: Path) -> None:
    import cv2

    from fer_runtime import Predictor

    p = Predictor(model_dir, device="cpu", threads=1, batch_size=4)
    rng = np.random.default_rng(15)
    base = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in FACES]
    jobs = [[np.clip(base[(t + k) % len(base)].astype(np.int16) + rng.integers(-20, 21, (48, 48)), 0, 255)
             .astype(np.uint8) for k in range(6)] for t in range(8)]
    serial = [(p.predict(j), p.saliency(j)) for j in jobs]
    results: list[object] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(t: int) -> None:
        start.wait()
        out = []
        for _ in range(3):  # overlap predict and saliency calls of all threads, several times
            out.append((p.predict(jobs[t]), p.saliency(jobs[t])))
        results[t] = out

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=TIMEOUT)
    for t, (probs, maps) in enumerate(serial):
        assert results[t] is not None, f"thread {t} failed"
        for got_probs, got_maps in results[t]:  # type: ignore[union-attr]
            np.testing.assert_allclose(got_probs, probs, atol=1e-6)
            np.testing.assert_allclose(got_maps, maps, atol=1e-5)


def test_large_colour_images_turn_gray_in_strips_with_the_same_numbers() -> None:
    """The strip-wise gray conversion (no float32 colour copy of a huge photo) gives bit-identical pixels."""
    import cv2

    from fer_runtime import images

    rng = np.random.default_rng(15)
    for shape, dtype in (((1500, 1001, 3), np.uint8), ((1200, 900, 4), np.uint16)):
        im = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
        assert im.size > images._STRIP_PIXELS
        whole = cv2.cvtColor(images._to_float255(im), cv2.COLOR_BGR2GRAY if shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        np.testing.assert_array_equal(images.to_gray(im), whole)


def test_sixteen_bit_images_become_8_bit_in_strips() -> None:
    """uint16 -> uint8 is the float rule's rounding for every value, without a float copy of the whole image
    (a 179 MP 16-bit RGB photo would have needed about 8 GB)."""
    import tracemalloc

    from fer_runtime import images

    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(images.to_uint8(every), images._round_uint8(images._to_float255(every)))
    big = np.random.default_rng(16).integers(0, 65535, (3000, 1000, 3), dtype=np.uint16)  # 18 MB
    tracemalloc.start()
    try:
        small = images.to_uint8(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert small.shape == big.shape and small.dtype == np.uint8
    assert peak < big.nbytes, peak  # the uint8 result (half the input) and strips; a float32 copy alone is 2x
