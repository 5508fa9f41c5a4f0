"""The export itself: Keras members -> verified ONNX forward + saliency graphs and ``manifest.json``.

Everything is built and verified in memory, then written into a staged copy of ``out`` that is
exchanged with ``out`` in one step (:func:`fer_runtime.atomic.atomic_dir`): the manifest and the files
it hashes change together or not at all, even if the process is killed. On any failure an
:class:`ExportError` (or the ``OSError`` of a full disk) is raised and ``out`` is left as it was.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fer_export.errors import ExportError, check_writable_folder, refuse_overwrite
from fer_export.verify import VerifyReport
from fer_runtime.atomic import atomic_dir, atomic_write
from fer_runtime.errors import FerRuntimeError
from fer_runtime.labels import IMAGE_SIZE, LABELS
from fer_runtime.manifest import (DEFAULT_VARIANT, FORWARD_INPUTS, FORWARD_OUTPUTS, MANIFEST_NAME, SALIENCY_INPUTS,
                                  SALIENCY_OUTPUTS, Calibration, FileEntry, InputSpec, Manifest, Variant, read_manifest,
                                  sha256_bytes, variant_file_names, variant_name_problem, variant_weights_name,
                                  write_manifest)

AUTO_TEMPERATURE = "auto"  # fit the temperature on PublicTest (fer_export.calibrate)
CALIBRATION_SPLIT = "PublicTest"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fer2013_small.csv.gz"


@dataclass
class ExportResult:
    """What an export wrote and how it verified."""

    out: Path
    variant: str
    forward: Path
    saliency: Path
    weights: Path  # the weights file both graphs read
    manifest_path: Path
    manifest: Manifest
    report: VerifyReport


def producer_versions(opset: int) -> dict[str, Any]:
    """Versions of the tools that produced (and verified) the files."""
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    try:
        from importlib.metadata import version

        toolkit = version("fer-toolkit")
    except Exception:
        toolkit = "unknown"
    return {"fer_toolkit": toolkit, "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "opset": int(opset)}


def preprocessing_text(models: Sequence[Any]) -> str:
    """Describe the in-graph preprocessing (the members' leading Rescaling layers)."""
    found = set()
    for m in models:
        first = next((l for l in m.layers if type(l).__name__ != "InputLayer"), None)
        if first is not None and type(first).__name__ == "Rescaling":
            s, o = float(first.scale), float(first.offset)
            found.add("x/255 (Rescaling)" if abs(s * 255 - 1) < 1e-6 and o == 0 else f"x*{s:g}+{o:g} (Rescaling)")
        else:
            found.add("none")
    return f"{'; '.join(sorted(found))}; expects gray {IMAGE_SIZE}x{IMAGE_SIZE} float32 0..255"


def _existing_manifest(out: Path) -> Manifest | None:
    if not (out / MANIFEST_NAME).exists():
        return None
    try:
        m = read_manifest(out)
        m.check_rewritable(out / MANIFEST_NAME)
    except FerRuntimeError as e:
        raise ExportError(f"cannot merge into the existing manifest: {e}; move it away or choose another --out") from None
    if list(m.labels) != list(LABELS):
        raise ExportError(f"{out / MANIFEST_NAME} has labels {m.labels}, not {list(LABELS)}; choose another --out")
    return m


def _batch_dim_as_n(model: Any) -> None:
    """Name the symbolic batch dimension of every graph input/output ``N`` (tf2onnx says ``unk__123``)."""
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"


def _fit_temperature(models: Sequence[Any], data: Any, tta: str) -> tuple[float, dict[str, Any]]:
    """Fit T on the PublicTest split of ``data`` with the variant's TTA; (T, the manifest's calibration dict)."""
    from fer_export import calibrate
    from fer_train import inference

    split = data[CALIBRATION_SPLIT]
    if len(split) == 0 or (split.y < 0).any():
        raise ExportError(f"--temperature auto: the {CALIBRATION_SPLIT} rows of {data.path} must be labelled and non-empty")
    z = inference.member_logits(models, split.x, tta)  # [N, members, views, 7]
    terms = [z[:, k, v] for k in range(z.shape[1]) for v in range(z.shape[2])]
    t = calibrate.fit_temperature(terms, split.y)
    return t, calibrate.calibration_record(terms, split.y, t, CALIBRATION_SPLIT)


def export_models(sources: Sequence[str | Path], out: str | Path, *, variant: str = DEFAULT_VARIANT, opset: int = 17,
                  temperature: float | str = 1.0, tta: str = "none", verify_data: str | Path | None = None,
                  verify_count: int = 200, description: str = "",
                  log: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Export the ensemble of ``sources`` (runs, ensemble dirs or ``.keras`` files) into ``out`` as ``variant``.

    Writes the forward graph, the saliency graph, the weights file both read (each weight stored once,
    :mod:`fer_export.share`) and (merged) ``manifest.json``; verifies both
    graphs against the Keras members first (see :mod:`fer_export.verify`). ``verify_data`` is a
    data file/folder whose PublicTest (or validation) rows are used, at most ``verify_count`` of
    them; default: the repository's test fixture if present. ``temperature="auto"`` fits the
    temperature on the PublicTest split of ``verify_data`` (a Kaggle CSV), with the variant's TTA,
    and records the fit in the variant's ``calibration``. Raises ExportError on any failure.
    """
    from fer_export import convert, graphs, members as members_mod, share, verify

    out = Path(out)
    if problem := variant_name_problem(variant):
        raise ExportError(problem)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    if verify_count < 0:
        raise ExportError(f"--verify-count must be >= 0, got {verify_count}")
    convert.check_opset(opset)
    auto = temperature == AUTO_TEMPERATURE
    graphs.check_options(1.0 if auto else temperature, tta)
    check_writable_folder(out, "--out")  # found now, not after the members were converted and verified
    existing = _existing_manifest(out)
    ours = {*variant_file_names(variant), variant_weights_name(variant)}
    if existing:
        refuse_overwrite(variant, ours & existing.files_of_others(variant), out / MANIFEST_NAME, "--variant")

    t0 = time.time()
    data = verify.load_data(verify_data) if verify_data is not None else None
    if auto and (data is None or CALIBRATION_SPLIT not in data.splits):
        raise ExportError(f"--temperature auto fits on the {CALIBRATION_SPLIT} split, so --verify-data must be a Kaggle "
                          f"fer2013 CSV (emotion,pixels,Usage); got {verify_data if verify_data is not None else 'none'}")
    check_data = data if data is not None else (verify.load_data(FIXTURE) if FIXTURE.exists() else None)
    log(f"loading members of {', '.join(map(str, sources))}")
    members = members_mod.load_members(sources, data)
    models = [m.model for m in members]
    calibration: dict[str, Any] = {}
    if auto:
        log(f"fitting the temperature on {len(data[CALIBRATION_SPLIT])} {CALIBRATION_SPLIT} images (TTA {tta})")
        temperature, calibration = _fit_temperature(models, data, tta)
        log(f"temperature {temperature:.4f}: NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}, "
            f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    temperature = float(temperature)

    log(f"converting {len(models)} member(s) to ONNX (opset {opset})")
    fwd_proto = convert.to_onnx(graphs.make_forward_fn(models, temperature, tta), opset, "forward")
    sal_proto = convert.to_onnx(graphs.make_saliency_fn(models, temperature, tta), opset, "saliency")
    convert.order_outputs(fwd_proto, FORWARD_OUTPUTS)
    convert.order_outputs(sal_proto, SALIENCY_OUTPUTS)
    for p in (fwd_proto, sal_proto):
        _batch_dim_as_n(p)
    fwd_name, sal_name = variant_file_names(variant)
    weights_name = variant_weights_name(variant)
    weights = share.store_once([fwd_proto, sal_proto], weights_name)
    log(f"weights stored once in {weights_name}: {len(weights) / 1e6:.1f} MB")
    what = f"single model {members[0].name}" if len(members) == 1 else \
        f"{len(members)}-member ensemble ({', '.join(m.name for m in members)})"
    fitted = f" (fitted on {CALIBRATION_SPLIT})" if auto else ""
    desc = description or f"{what}; temperature {temperature:.4g}{fitted}, TTA {tta}"
    manifest = existing or Manifest(labels=list(LABELS), input=InputSpec(), variants={}, files={})
    manifest.input = InputSpec(preprocessing_in_graph=preprocessing_text(models))
    manifest.variants[variant] = Variant(forward=fwd_name, saliency=sal_name,
                                         members=[m.manifest_entry() for m in members],
                                         temperature=temperature, tta=tta, description=desc,
                                         calibration=Calibration(**calibration) if calibration else None)
    for k in [k for k, v in manifest.variants.items() if v.quantization and v.quantization.source == variant]:
        del manifest.variants[k]  # its int8 graph was made from the graph this export replaces
        log(f"dropped variant {k!r}: it was quantized from the previous {variant!r}; run fer-quantize again")
    manifest.producer = producer_versions(opset)
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest.default_variant = DEFAULT_VARIANT if DEFAULT_VARIANT in manifest.variants else (
        manifest.default_variant if manifest.default_variant in manifest.variants else variant)

    # Metadata first: the hashes cover the final bytes.
    props = manifest.metadata_props(variant)
    blobs: dict[str, bytes] = {weights_name: weights}
    manifest.files[weights_name] = FileEntry(sha256_bytes(weights), len(weights))
    sessions = {}
    graph_files = ((fwd_name, fwd_proto, FORWARD_INPUTS, FORWARD_OUTPUTS, "forward"),
                   (sal_name, sal_proto, SALIENCY_INPUTS, SALIENCY_OUTPUTS, "saliency"))
    for name, proto, ins, outs, kind in graph_files:
        convert.set_metadata(proto, {**props, "fer.graph": kind}, doc=f"FER2013 {kind} graph, variant {variant}: {desc}")
        blobs[name] = proto.SerializeToString()
        sessions[name] = convert.check_onnx_bytes(blobs[name], name, ins, outs, {weights_name: weights})
        manifest.files[name] = FileEntry(sha256_bytes(blobs[name]), len(blobs[name]),
                                         convert.tensor_specs(proto.graph.input), convert.tensor_specs(proto.graph.output),
                                         external=[weights_name])
    used = manifest.referenced_files()  # keeps the face detector's entry too
    unused = sorted(set(manifest.files) - used)  # files of a dropped variant, or older names: removed from `out`
    manifest.files = {k: v for k, v in manifest.files.items() if k in used}
    Manifest.from_dict(manifest.to_dict())  # the runtime's own validation must accept it

    images, real, source = verify.verification_images(check_data, verify_count)
    log(f"verifying on {source}")
    report = verify.verify_export(sessions[fwd_name], sessions[sal_name], models, images, real, source,
                                  temperature, tta)

    # The manifest and the files it hashes change together: a staged copy of `out` is exchanged with it in one
    # step, so a kill or a full disk at any point leaves the previous folder as it was.
    with atomic_dir(out) as stage:
        for name in unused:
            (stage / name).unlink(missing_ok=True)
        for name, data_bytes in blobs.items():
            atomic_write(stage / name, data_bytes)
        write_manifest(stage, manifest)
    log(f"done in {time.time() - t0:.1f}s")
    return ExportResult(out, variant, out / fwd_name, out / sal_name, out / weights_name, out / MANIFEST_NAME, manifest,
                        report)
