"""Static int8 quantization (QDQ) of an exported forward graph, with an agreement/accuracy gate before it ships.

The source variant's verified forward graph is calibrated on a sample of real faces with onnxruntime's
``quantize_static`` (QDQ format, int8 weights per channel, activation ranges by ``--calibrate-method``, MinMax by default) and compared with
the float graph on labelled images. Only if argmax agreement and accuracy loss pass the thresholds is the
int8 graph written next to the others and added to ``manifest.json`` as a new variant.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_export.errors import ExportError, check_writable_folder, refuse_overwrite
from fer_runtime.atomic import atomic_dir, atomic_write
from fer_runtime.labels import IMAGE_SIZE
from fer_runtime.manifest import (LOGITS, MANIFEST_NAME, PROBS, FileEntry, Quantization, read_manifest, sha256_bytes,
                                  variant_file_names, variant_name_problem, write_manifest)
from fer_runtime.model_files import read_graph
from fer_runtime.providers import run_batched

MIN_AGREEMENT = 0.99  # argmax agreement with the float graph
MAX_ACCURACY_LOSS = 0.005  # accuracy points (fraction) the int8 graph may lose
_BATCH = 256
_CALIB_BATCH = 20
# quantize_static's entropy calibrator histograms each activation in 128 bins and searches thresholds at 128 quantized
# bins, so its KL search has one candidate, the full range: MinMax. The ranges are computed here at TensorRT's 2048.
ENTROPY_BINS = 2048


@dataclass
class QuantizeReport:
    """What was quantized and how it compares with the float graph on the evaluation images."""

    source: str
    target: str
    calibration_images: int
    eval_images: int
    agreement: float
    accuracy_fp32: float
    accuracy_int8: float
    min_agreement: float
    max_accuracy_loss: float
    calibrate_method: str = "minmax"
    shipped: bool = False
    reason: str = ""
    forward: Path | None = None

    @property
    def accuracy_loss(self) -> float:
        """Float accuracy minus int8 accuracy (negative when int8 is better)."""
        return self.accuracy_fp32 - self.accuracy_int8

    def rows(self) -> list[tuple[str, str, str]]:
        """(check, value, limit) rows for a table."""
        return [("argmax agreement with fp32", f"{self.agreement:.4f}", f">= {self.min_agreement:g}"),
                ("accuracy fp32", f"{self.accuracy_fp32:.4f}", ""),
                ("accuracy int8", f"{self.accuracy_int8:.4f}", ""),
                ("accuracy loss", f"{self.accuracy_loss:+.4f}", f"<= {self.max_accuracy_loss:g}")]

    def manifest_entry(self) -> Quantization:
        """The ``quantization`` record stored on the variant."""
        return Quantization(source=self.source, method="onnxruntime quantize_static, QDQ, int8 weights per channel, "
                            f"int8 activations ({CALIBRATE_METHODS[self.calibrate_method]}), float logits layer and softmax",
                            calibration_images=self.calibration_images, eval_images=self.eval_images,
                            agreement=round(self.agreement, 6), accuracy_fp32=round(self.accuracy_fp32, 6),
                            accuracy_int8=round(self.accuracy_int8, 6))


class QuantizationRefusedError(ExportError):
    """The int8 graph disagrees with the float graph too much; nothing was written. ``report`` has the figures."""

    def __init__(self, message: str, report: QuantizeReport) -> None:
        super().__init__(message)
        self.report = report


CALIBRATE_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _batches(x: np.ndarray, input_name: str, size: int = _BATCH, whole: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of ``size`` rows; ``whole=True`` drops a short last batch."""
    stop = len(x) - size + 1 if whole else len(x)
    for i in range(0, max(stop, 0), size):
        yield {input_name: x[i:i + size]}


def _calibration_reader(x: np.ndarray, input_name: str) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over ``x`` in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            # Equal-sized batches: onnxruntime's histogram calibrators (entropy, percentile) stack them.
            self._it = _batches(x, input_name, min(_CALIB_BATCH, len(x)), whole=True)

    return _Reader()


def _as_input(images: np.ndarray) -> np.ndarray:
    """uint8/float (N, 48, 48[, 1]) faces to the float32 (N, 48, 48, 1) 0..255 model input."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1) or len(x) == 0:
        raise ExportError(f"expected a non-empty batch of {IMAGE_SIZE}x{IMAGE_SIZE} gray faces, got shape {np.shape(images)}")
    return np.ascontiguousarray(x)


def _check_method(calibrate_method: str) -> None:
    if calibrate_method not in CALIBRATE_METHODS:
        raise ExportError(f"unknown calibration method {calibrate_method!r}; choose from {', '.join(CALIBRATE_METHODS)}")


# Element-wise and shape ops between a logits layer's MatMul/Gemm and the softmax (bias, temperature, ensemble mean)
_LOGIT_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Mean", "Identity", "Reshape", "Squeeze", "Unsqueeze",
                        "Transpose", "Concat", "ReduceMean"})


def float_head(graph: Any) -> list[str]:
    """Names of the nodes static quantization must leave float: every logits layer and all that follows it.

    Walking back from the ``logits`` output and from each Softmax's input through element-wise and shape ops
    (bias, temperature, the mean over members and views) to the MatMul/Gemm that computes each member's logits;
    those nodes, and every node downstream of them, are the head. 8-bit logits would put the class scores on a
    grid of about 1/8 logit, so near-ties flip or tie in argmax; the logits layers are tiny (units x 7), so keeping
    them float costs nothing measurable.
    """
    producer = {out: node for node in graph.node for out in node.output}
    head: set[str] = set()
    stack = [LOGITS, *(n.input[0] for n in graph.node if n.op_type == "Softmax")]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in head:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            head.add(node.name)
        elif node.op_type in _LOGIT_OPS:
            head.add(node.name)
            stack.extend(node.input)
    names, live = [], set()
    for node in graph.node:  # topological order
        if node.name in head or live & set(node.input) or node.op_type == "Softmax":
            names.append(node.name)
            live |= set(node.output)
    return names


def quantize_graph(model: Any, calibration: np.ndarray, input_name: str, calibrate_method: str = "minmax") -> Any:
    """The static int8 (QDQ) ``onnx.ModelProto`` of the float forward graph ``model`` (weights inside it).

    onnxruntime's ``quant_pre_process`` then ``quantize_static``: int8 weights per channel (symmetric), int8
    activations whose ranges ``calibrate_method`` sets from ``calibration`` (float32 [N,48,48,1] model inputs,
    fed in equal batches). The layer that computes the logits and everything after it (temperature, softmax) stay
    float: see :func:`float_head`. No gate: :func:`quantize_variant` adds that.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check_method(calibrate_method)
    with tempfile.TemporaryDirectory(prefix="fer-quantize-") as tmp:
        whole, pre, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(whole))
        quant_pre_process(str(whole), str(pre), skip_symbolic_shape=True)
        keep_float = float_head(onnx.load(str(pre)).graph)
        method, options = getattr(CalibrationMethod, CALIBRATE_METHODS[calibrate_method]), {}
        if calibrate_method == "entropy":  # the ranges come in as overrides; MinMax's own are replaced by them
            method, options = CalibrationMethod.MinMax, {"TensorQuantOverrides": _entropy_ranges(pre, calibration,
                                                                                                  input_name, Path(tmp))}
        quantize_static(str(pre), str(int8), _calibration_reader(calibration, input_name),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=method, nodes_to_exclude=keep_float,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, **options})
        return onnx.load(str(int8))


def _entropy_ranges(model: Path, calibration: np.ndarray, input_name: str,
                    tmp: Path) -> dict[str, list[dict[str, np.float32]]]:
    """Each activation's entropy (KL) range on ``calibration`` at :data:`ENTROPY_BINS` histogram bins, as
    ``quantize_static``'s ``TensorQuantOverrides``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / "entropy.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": ENTROPY_BINS})
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints are not fer-quantize's output
        calibrator.collect_data(_calibration_reader(calibration, input_name))
        ranges = calibrator.compute_data()
    return {name: [{k: np.float32(np.ravel(v)[0]) for k, v in zip(("rmin", "rmax"), ranges[name].range_value)}]
            for name in ranges}


def quantize_variant(model_dir: str | os.PathLike[str], calibration_images: np.ndarray, eval_images: np.ndarray,
                     eval_labels: np.ndarray, *, source: str = "fast", target: str = "fast-int8",
                     min_agreement: float = MIN_AGREEMENT, max_accuracy_loss: float = MAX_ACCURACY_LOSS,
                     calibrate_method: str = "minmax", log: Callable[[str], None] = lambda s: None) -> QuantizeReport:
    """Quantize variant ``source`` of ``model_dir`` to int8 and, if it passes, add it as variant ``target``.

    ``calibration_images``: faces for the activation ranges (e.g. 500 Training images); ``eval_images`` and
    ``eval_labels``: a labelled set (PublicTest) for the gate. The new variant reuses the source's saliency
    graph (gradients of an int8 graph mean little) and records the figures under ``quantization``.
    ``calibrate_method``: how activation ranges are set from the calibration images, one of
    :data:`CALIBRATE_METHODS` (onnxruntime's MinMax, Entropy or Percentile calibrators).
    Raises :class:`QuantizationRefusedError` (with the report) if agreement < ``min_agreement`` or the
    accuracy loss > ``max_accuracy_loss``, the runtime's :class:`~fer_runtime.errors.FerRuntimeError`s for a missing
    or corrupt model folder, and :class:`ExportError` for any other failure.
    """
    import onnx
    import onnxruntime as ort

    from fer_export import convert
    from fer_export.share import internalize

    _check_method(calibrate_method)
    model_dir = Path(model_dir)
    check_writable_folder(model_dir, "--model-dir")  # found now, not after calibrating and comparing
    manifest = read_manifest(model_dir)
    manifest.check_rewritable(model_dir / MANIFEST_NAME)
    if source not in manifest.variants:
        raise ExportError(f"variant {source!r} is not in {model_dir / MANIFEST_NAME} "
                          f"(variants: {', '.join(sorted(manifest.variants))})")
    if problem := variant_name_problem(target):
        raise ExportError(problem)
    if target == source:
        raise ExportError("the quantized variant needs a name of its own")
    old = manifest.variants.get(target)
    if old is not None and (old.quantization is None or old.quantization.source != source):
        raise ExportError(f"variant {target!r} already exists and is not an int8 copy of {source!r}; "
                          "choose another --target")
    fwd_name = variant_file_names(target)[0]
    refuse_overwrite(target, {fwd_name} & manifest.files_of_others(target), model_dir / MANIFEST_NAME, "--target")
    labels = np.asarray(eval_labels).astype(np.int64).ravel()
    calib, evalx = _as_input(calibration_images), _as_input(eval_images)
    calib = calib[:max(1, len(calib) // _CALIB_BATCH) * min(_CALIB_BATCH, len(calib))]  # what _batches feeds
    if len(labels) != len(evalx):
        raise ExportError(f"{len(evalx)} evaluation images but {len(labels)} labels")
    src = manifest.variants[source]
    input_name = manifest.input.name
    fp32 = read_graph(model_dir, manifest, src.forward)

    log(f"quantizing {src.forward}: calibrating on {len(calib)} images")
    proto = quantize_graph(internalize(onnx.load_from_string(fp32.data), fp32.external), calib, input_name,
                           calibrate_method)

    desc = f"static int8 (QDQ) of {source!r}; saliency from the float graph"
    variant = dataclasses.replace(src, forward=fwd_name, description=desc)
    manifest.variants[target] = variant
    props = manifest.metadata_props(target)
    convert.set_metadata(proto, {**props, "fer.graph": "forward"}, doc=f"FER2013 forward graph, variant {target}: {desc}")
    data = proto.SerializeToString()
    outputs = [o.name for o in proto.graph.output]
    int8_sess = convert.check_onnx_bytes(data, fwd_name, [input_name], outputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    fp32_sess = fp32.session(["CPUExecutionProvider"], so)

    log(f"comparing on {len(evalx)} images")
    p32, p8 = (run_batched(sess, name, [PROBS], {input_name: evalx}, _BATCH)[0].argmax(1)
                for sess, name in ((fp32_sess, "the float graph"), (int8_sess, "the int8 graph")))
    report = QuantizeReport(source, target, len(calib), len(evalx), float(np.mean(p32 == p8)),
                            float(np.mean(p32 == labels)), float(np.mean(p8 == labels)),
                            min_agreement, max_accuracy_loss, calibrate_method)
    problems = []
    if report.agreement < min_agreement:
        problems.append(f"argmax agreement {report.agreement:.4f} < {min_agreement:g}")
    if report.accuracy_loss > max_accuracy_loss:
        problems.append(f"accuracy loss {report.accuracy_loss:.4f} > {max_accuracy_loss:g}")
    if problems:
        report.reason = "; ".join(problems)
        raise QuantizationRefusedError(f"{target} not shipped: {report.reason} on {len(evalx)} images", report)

    manifest.variants[target] = dataclasses.replace(variant, quantization=report.manifest_entry())
    manifest.files[fwd_name] = FileEntry(sha256_bytes(data), len(data), convert.tensor_specs(proto.graph.input),
                                         convert.tensor_specs(proto.graph.output))
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    type(manifest).from_dict(manifest.to_dict())  # the runtime's own validation must accept it
    with atomic_dir(model_dir) as stage:  # the file and the manifest that hashes it change together
        atomic_write(stage / fwd_name, data)
        write_manifest(stage, manifest)
    report.shipped, report.reason, report.forward = True, "passed", model_dir / fwd_name
    log(f"wrote {model_dir / fwd_name} and added variant {target!r}")
    return report
