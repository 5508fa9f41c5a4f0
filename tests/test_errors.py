"""Typed errors and exit codes: InferenceError, the CUDA->CPU fallback, a missing Haar cascade, bugs that are not
turned into error rows, and fer-infer's exit codes 130 (Ctrl-C) and 141 (closed stdout). No TensorFlow."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_runtime import providers as prov
from fer_runtime.errors import InferenceError, ModelNotFoundError, ProviderUnavailableError, first_line
from fer_runtime.exitcodes import INTERRUPTED, PIPE_CLOSED

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
FER_INFER = [sys.executable, "-c", "from fer_runtime.cli import main; main()"]


def test_a_failed_run_is_an_inference_error_naming_the_model(predictor) -> None:
    bad = np.zeros((2, 47, 48, 1), np.float32)  # the graph wants 48x48: onnxruntime refuses in run()
    with pytest.raises(InferenceError) as ei:
        predictor._run_forward(bad)
    msg = str(ei.value)
    assert predictor.manifest.variants[predictor.variant].forward in msg and "CPUExecutionProvider" in msg
    assert "dimensions" in msg.lower() and "\n" not in msg


def test_run_batched_equals_one_run_and_names_the_model_when_it_fails(model_dir: Path) -> None:
    """The batched runner that export verification and quantization share: slices that end short, stitched back."""
    import onnxruntime as ort

    from fer_runtime.manifest import FORWARD_OUTPUTS, IMAGE_INPUT

    sess = ort.InferenceSession(str(model_dir / "fer_fast.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (70, 48, 48, 1)).astype(np.float32)
    whole = sess.run(list(FORWARD_OUTPUTS), {IMAGE_INPUT: x})
    got = prov.run_batched(sess, "fast", list(FORWARD_OUTPUTS), {IMAGE_INPUT: x}, batch=32)  # 32 + 32 + 6
    assert [g.shape for g in got] == [w.shape for w in whole]
    for g, w in zip(got, whole):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceError, match=r"^the fast graph: onnxruntime failed to run it on CPUExecutionProvider"):
        prov.run_batched(sess, "the fast graph", list(FORWARD_OUTPUTS), {IMAGE_INPUT: x[:, :47]})


def test_auto_falls_back_to_cpu_when_cuda_fails_but_cuda_is_an_error(model_dir: Path, monkeypatch) -> None:
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    from fer_runtime import Predictor

    real = ort.InferenceSession
    cuda_tries = []

    def cuda_breaks(data, sess_options=None, providers=None):
        if prov.CUDA in prov.provider_names(providers):
            cuda_tries.append(providers)
            raise EPFail("CUDA failure 100: no CUDA-capable device is detected")
        return real(data, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(prov, "available_providers", lambda: [prov.CUDA, prov.CPU])
    monkeypatch.setattr(ort, "InferenceSession", cuda_breaks)
    p = Predictor(model_dir, device="auto")
    assert p.providers == [prov.CPU]
    assert len(cuda_tries) == 1
    p.load_saliency()  # later sessions go straight to CPU
    assert len(cuda_tries) == 1 and p.providers == [prov.CPU]
    with pytest.raises(ProviderUnavailableError, match="no CUDA-capable device"):
        Predictor(model_dir, device="cuda")


def test_without_onnxruntime_the_cli_says_what_to_install(model_dir: Path, tmp_path: Path) -> None:
    """A bare ``pip install fer-toolkit`` has no onnxruntime: one line naming the extras, exit 2, no output file."""
    code = ("import sys; sys.modules['onnxruntime'] = None  # what a missing package looks like to import\n"
            "from fer_runtime.cli import main; main()")
    out = tmp_path / "preds.csv"
    res = subprocess.run([sys.executable, "-c", code, str(EXAMPLES), "--out", str(out), "--model-dir", str(model_dir),
                          "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: onnxruntime cannot be imported") and "fer-toolkit[cpu]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_missing_haar_cascade_is_a_typed_error(monkeypatch, tmp_path: Path) -> None:
    import cv2

    from fer_runtime.detectors import HaarDetector

    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + os.sep)
    monkeypatch.setattr(HaarDetector, "_cascade", None)
    with pytest.raises(ModelNotFoundError, match="Haar cascade"):
        HaarDetector().detect(np.zeros((200, 200, 3), np.uint8))


def test_a_bug_is_not_turned_into_error_rows(predictor, monkeypatch) -> None:
    from fer_runtime import pipeline

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in face finding")

    monkeypatch.setattr(pipeline, "face_regions", bug)
    with pytest.raises(ZeroDivisionError):
        list(pipeline.infer_files(predictor, [EXAMPLES / "happy_0.png"], faces="crop"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_named_as_stdout(model_dir: Path) -> None:
    with open("/dev/full", "w") as full:
        res = subprocess.run([*FER_INFER, str(EXAMPLES), "--model-dir", str(model_dir), "--model", "fast", "-q"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr == "error: cannot write stdout: No space left on device\n", res.stderr


def test_closed_stdout_ends_quietly_with_141(model_dir: Path) -> None:
    proc = subprocess.Popen([*FER_INFER, str(EXAMPLES), "--model-dir", str(model_dir), "--model", "fast", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first row is written (like `| head` after its lines)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == PIPE_CLOSED, err
    assert err == ""


def test_ctrl_c_exits_130_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    for i in range(800):  # ~120 KB of rows: more than a pipe holds, so the run cannot finish unread
        shutil.copy(EXAMPLES / "happy_0.png", tmp_path / f"{i:04d}.png")
    # As started from a terminal: a background job (`cmd &` without job control, as CI may run this suite)
    # inherits SIGINT ignored, and Python keeps it ignored, so the run would finish and exit 0.
    with_ctrl_c = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + FER_INFER[2]
    proc = subprocess.Popen([sys.executable, "-c", with_ctrl_c, str(tmp_path), "--model-dir", str(model_dir), "--model",
                             "fast", "-q", "--faces", "crop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    assert first.startswith(b"path,")  # running: the first rows are out
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED, err
    assert err.decode().strip().splitlines() == ["interrupted"]
    assert (first + out).count(b"\n") < 1 + 800  # stopped part-way


@pytest.mark.parametrize("error, plain, named", [
    (OSError("disk gone\nerrno 5 at block 9"), "disk gone", "OSError: disk gone"),
    (RuntimeError(), "RuntimeError", "RuntimeError"),  # no text: the class name once, never "RuntimeError: RuntimeError"
    (KeyError("labels"), "'labels'", "KeyError: 'labels'"),
    (ValueError("  \n "), "ValueError", "ValueError"),
])
def test_first_line_renders_any_exception_on_one_line(error: BaseException, plain: str, named: str) -> None:
    assert first_line(error) == plain
    assert first_line(error, named=True) == named


def test_last_line_takes_the_cause_at_the_end_of_opencv_and_ray_texts() -> None:
    from fer_runtime.errors import last_line

    cv = RuntimeError("OpenCV(4.10.0) /io/opencv/modules/imgcodecs/src/loadsave.cpp:77: error: (-215:Assertion "
                      "failed) pixels <= CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'\n")
    assert last_line(cv).endswith("in function 'validateInputImageSize'")
    ray = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 3\n\nInferenceError: model gone\n  \n")
    assert last_line(ray) == "InferenceError: model gone"
    assert last_line(RuntimeError()) == "RuntimeError" and last_line(ValueError(" \n ")) == "ValueError"


@pytest.mark.parametrize("module, load, extra", [("onnxruntime", "fer_runtime.providers:onnxruntime", "fer-toolkit[cpu]"),
                                                  ("ray", "fer_runtime.distributed:import_ray", "fer-toolkit[ray]")])
def test_a_missing_optional_package_is_a_missing_dependency_error(monkeypatch, module: str, load: str,
                                                                  extra: str) -> None:
    """One type for "install this extra", whichever package is missing, so a caller can catch it."""
    import importlib

    from fer_runtime.errors import MissingDependencyError

    name, func = load.split(":")
    fn = getattr(importlib.import_module(name), func)
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingDependencyError, match=re.escape(extra)) as ei:
        fn()
    assert isinstance(ei.value, ImportError) and "\n" not in str(ei.value)
