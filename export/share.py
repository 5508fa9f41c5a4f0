"""Store each weight once: replace initializers that are exact transposes of another by ops.

A saliency graph holds every layer twice: the forward kernel, and the backward kernel that the
gradient twins use (a dense layer's ``W^T``; a convolution's kernel flipped spatially with its
in/out channels swapped). tf2onnx folds both into separate constants, which doubles the file.
:func:`share_weights` finds each initializer that is an exact rearrangement of an earlier one
and computes it from that one instead (``Transpose``, plus ``Gather`` with reversed indices for
the spatial flip). The values are bit-identical; onnxruntime folds the ops back into constants
when it loads the session, so inference speed does not change.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

MIN_ELEMENTS = 256  # tiny constants are not worth a node


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


RULES = {2: Rule("transpose", _dense_t), 4: Rule("conv_back", _conv_back)}


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


def share_weights(model: Any, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; return how many initializer bytes it saved.

    Only exact matches are rewritten (same dtype, shape and SHA-256 of the bytes), so the graph computes
    the same numbers as before.
    """
    from onnx import numpy_helper

    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    derivable: dict[tuple, tuple[str, Rule]] = {}
    replace: dict[str, tuple[str, Rule, tuple]] = {}
    saved = 0
    for init in graph.initializer:
        if init.name in graph_inputs:
            continue  # an overridable initializer must stay a plain constant
        a = numpy_helper.to_array(init)
        if a.size < min_elements or a.dtype.kind != "f" or a.ndim not in RULES:
            continue
        hit = derivable.get(_key(a))
        if hit is not None:
            src_name, rule = hit
            replace[init.name] = (src_name, rule, a.shape)
            saved += a.nbytes
            continue
        rule = RULES[a.ndim]
        derivable.setdefault(_key(rule.derive(a)), (init.name, rule))
    if not replace:
        return 0
    kept = [i for i in graph.initializer if i.name not in replace]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    new_nodes = []
    for target, (source, rule, shape) in replace.items():
        new_nodes.extend(_nodes_for(rule, source, target, shape, graph))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old)
    return saved
