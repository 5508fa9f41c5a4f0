"""tf.function -> ONNX with tf2onnx, ONNX metadata, and the structural checks every file must pass.

tf2onnx converts with ``continue_on_error=True``: an op it cannot convert is logged and left in the
graph, and the file is written anyway. So every converted model goes through
:func:`check_onnx_bytes` (unknown ops, ``onnx.checker``, an onnxruntime CPU session, expected
input/output names) before it is trusted.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from fer_export.errors import ExportError
from fer_runtime.manifest import TensorSpec
from fer_runtime.errors import first_line

MIN_OPSET = 13
MAX_OPSET = 18  # tf2onnx 1.17 refuses >= 19


def check_opset(opset: int) -> None:
    """Raise ExportError unless ``opset`` is one tf2onnx and onnxruntime both handle here."""
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (tf2onnx refuses 19 and above)")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if text:  # an empty error line names nothing
            self.messages.append(text.splitlines()[0][:300])


@contextmanager
def _quiet_tf2onnx() -> Iterator[_Collect]:
    """Silence tf2onnx's chatter but collect its error lines (they name unconvertible ops)."""
    logger = logging.getLogger("tf2onnx")
    handler = _Collect()
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def to_onnx(fn: Any, opset: int = 17, name: str = "graph") -> Any:
    """Convert a ``tf.function`` with an ``input_signature`` to an ``onnx.ModelProto``.

    Raises ExportError if tf2onnx fails or leaves ops it could not convert (it would otherwise
    write a broken file silently).
    """
    import tf2onnx

    check_opset(opset)
    sig = list(fn.input_signature)
    with _quiet_tf2onnx() as log:
        try:
            model, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=int(opset))
        except Exception as e:  # tf2onnx raises many unrelated types
            raise ExportError(f"tf2onnx could not convert the {name} graph: {first_line(e, named=True)}") from None
    bad = unknown_ops(model)
    if bad:
        raise ExportError(f"the {name} graph has ops ONNX opset {opset} lacks after conversion: {', '.join(bad)}"
                          + (f" (tf2onnx: {log.messages[0]})" if log.messages else ""))
    return model


def unknown_ops(model: Any) -> list[str]:
    """Op types in the graph that the ONNX standard domain does not define (tf2onnx's leftovers)."""
    import onnx

    bad = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            bad.add(f"{node.domain + '.' if node.domain else ''}{node.op_type}")
    return sorted(bad)


def set_metadata(model: Any, props: dict[str, str], doc: str = "") -> Any:
    """Replace the model's ``metadata_props`` with ``props`` (and set ``doc_string``); returns the model."""
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    if doc:
        model.doc_string = doc
    model.producer_name = "fer-export"
    return model


def order_outputs(model: Any, names: Sequence[str]) -> Any:
    """Reorder the graph outputs to ``names`` (tf2onnx sorts a dict's keys); returns the model."""
    by_name = {o.name: o for o in model.graph.output}
    if sorted(by_name) != sorted(names):
        raise ExportError(f"converted graph has outputs {sorted(by_name)}; expected {list(names)}")
    ordered = [by_name[n] for n in names]
    copies = [type(o)() for o in ordered]
    for c, o in zip(copies, ordered):
        c.CopyFrom(o)
    del model.graph.output[:]
    model.graph.output.extend(copies)
    return model


def tensor_specs(values: Sequence[Any]) -> list[TensorSpec]:
    """Manifest tensor specs (name, shape with None for symbolic dims, numpy dtype name) of graph inputs/outputs."""
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        out.append(TensorSpec(v.name, shape, dtype))
    return out


def check_onnx_bytes(data: bytes, filename: str, inputs: Sequence[str], outputs: Sequence[str],
                     external: Mapping[str, bytes] | None = None) -> Any:
    """Check a serialized model and return an onnxruntime CPU session built from exactly these bytes.

    ``external`` holds the weights files the graph refers to (location -> bytes). Runs
    ``onnx.checker.check_model`` (full check, on a copy with the weights inside), looks for leftover TF ops,
    checks the graph's input/output names, and loads it in onnxruntime; any failure raises ExportError naming
    the file.
    """
    import onnx
    import onnxruntime as ort

    from fer_export.share import internalize
    from fer_runtime.model_files import VerifiedGraph

    try:
        model = internalize(onnx.load_from_string(data), external or {})  # the session below uses `data` itself
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"{filename}: onnx.checker failed: {first_line(e)}") from None
    bad = unknown_ops(model)
    if bad:
        raise ExportError(f"{filename}: contains ops ONNX does not define: {', '.join(bad)}")
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(inputs) or got_out != list(outputs):
        raise ExportError(f"{filename}: graph has inputs {got_in} and outputs {got_out}; expected {list(inputs)} and {list(outputs)}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return VerifiedGraph(Path(filename), data, dict(external or {})).session(["CPUExecutionProvider"], opts)
    except Exception as e:
        raise ExportError(f"{filename}: onnxruntime cannot load it: {first_line(e)}") from None
