"""Store each weight once, in one external-data file shared by a variant's graphs.

A variant's forward graph and its saliency graph hold the same layers, and the saliency graph holds
each layer twice: the forward kernel, and the backward kernel that the gradient twins use (a dense
layer's ``W^T``; a convolution's kernel flipped spatially with its in/out channels swapped). tf2onnx
folds every one of them into a separate constant, which would store each weight three times.

:func:`store_once` moves the float initializers of all the graphs into one blob, the variant's weights
file (ONNX external data: ``location``, ``offset``, ``length``). A tensor equal to one already stored
points at the same bytes; a tensor that is an exact rearrangement of a stored one is computed from it
(``Transpose``, plus ``Gather`` with reversed indices for the spatial flip). The values are
bit-identical, and onnxruntime folds those ops back into constants when it loads a session, so
inference speed does not change. :func:`internalize` puts the bytes back into a graph (for tools that
need one self-contained model).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MIN_ELEMENTS = 256  # smaller constants stay inside the graph: not worth a reference or a node
ALIGN = 64  # byte alignment of each tensor in the weights file


@dataclass(frozen=True)
class Rule:
    """How one initializer is derived from another: ``derive(source)`` and the ONNX ops for it."""

    kind: str
    derive: Callable[[np.ndarray], np.ndarray]


def _dense_t(a: np.ndarray) -> np.ndarray:
    return a.T


def _conv_back(a: np.ndarray) -> np.ndarray:
    # ONNX conv weights are [out, in, kh, kw]: swap out/in and rotate the window 180 degrees.
    return a.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]


RULES = {2: Rule("transpose", _dense_t), 4: Rule("conv_back", _conv_back)}  # both are their own inverse


def _key(a: np.ndarray) -> tuple:
    return (a.dtype.str, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())


def _nodes_for(rule: Rule, source: str, target: str, shape: tuple, graph: Any) -> list[Any]:
    from onnx import helper, numpy_helper

    if rule.kind == "transpose":
        return [helper.make_node("Transpose", [source], [target], perm=[1, 0], name=f"share/{target}")]
    tmp1, tmp2 = f"share/{target}/t", f"share/{target}/h"
    nodes = [helper.make_node("Transpose", [source], [tmp1], perm=[1, 0, 2, 3], name=tmp1)]
    for axis, src, dst in ((2, tmp1, tmp2), (3, tmp2, target)):
        idx = f"share/{target}/rev{axis}"
        graph.initializer.append(numpy_helper.from_array(np.arange(shape[axis] - 1, -1, -1, dtype=np.int64), idx))
        nodes.append(helper.make_node("Gather", [src, idx], [dst], axis=axis, name=f"{idx}/gather"))
    return nodes


@dataclass(frozen=True)
class _Stored:
    offset: int
    length: int
    shape: tuple[int, ...]
    data_type: int


def _external(name: str, stored: _Stored, location: str) -> Any:
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=stored.data_type, dims=list(stored.shape))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(stored.offset)), ("length", str(stored.length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return t


def store_once(models: Sequence[Any], location: str, min_elements: int = MIN_ELEMENTS) -> bytes:
    """Move the float initializers of ``models`` (``onnx.ModelProto``, rewritten in place) into one weights file.

    Returns the file's bytes; every graph refers to it as ``location``. Each distinct tensor is stored once:
    exact matches only (same dtype, shape and SHA-256 of the bytes), so the graphs compute the same numbers.
    Graph inputs that are also initializers (overridable constants) and small tensors stay in the graph.
    """
    from onnx import numpy_helper

    blob = bytearray()
    stored: dict[tuple, _Stored] = {}
    derivable: dict[tuple, tuple[tuple, Rule]] = {}  # key of a rearrangement -> (key of its stored source, rule)
    for model in models:
        graph = model.graph
        graph_inputs = {i.name for i in graph.input}
        kept, sources, new_nodes = [], {}, []
        n_before = len(graph.initializer)
        for init in list(graph.initializer):
            a = numpy_helper.to_array(init)
            if init.name in graph_inputs or a.size < min_elements or a.dtype.kind != "f":
                kept.append(init)
                continue
            key = _key(a)
            if key not in stored and key in derivable:
                src_key, rule = derivable[key]
                src = stored[src_key]
                src_name = f"share/stored@{src.offset}"
                if src_name not in sources:
                    sources[src_name] = _external(src_name, src, location)
                new_nodes.extend(_nodes_for(rule, src_name, init.name, a.shape, graph))
                continue
            if key not in stored:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
                stored[key] = _Stored(len(blob), len(data), tuple(a.shape), init.data_type)
                blob.extend(data)
                if a.ndim in RULES:
                    derivable.setdefault(_key(RULES[a.ndim].derive(a)), (key, RULES[a.ndim]))
            kept.append(_external(init.name, stored[key], location))
        extra = list(graph.initializer[n_before:])  # the Gather indices _nodes_for added
        del graph.initializer[:]
        graph.initializer.extend(kept + list(sources.values()) + extra)
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + old)
    return bytes(blob)


def internalize(model: Any, files: Mapping[str, bytes]) -> Any:
    """Copy the external tensors of ``model`` back into it from ``files`` (location -> bytes); returns ``model``."""
    from onnx import TensorProto

    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        ref = {e.key: e.value for e in t.external_data}
        data = files[ref["location"]]
        offset = int(ref.get("offset", 0))
        length = int(ref["length"]) if "length" in ref else len(data) - offset
        t.raw_data = data[offset:offset + length]
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
    return model
