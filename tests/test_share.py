"""fer_export.share: transposed/flipped initializers are stored once and compute the same numbers."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fer_export.share import share_weights


def _conv_back(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _graph(w: np.ndarray, w_back: np.ndarray, d: np.ndarray, d_t: np.ndarray) -> onnx.ModelProto:
    """x -> Conv(w) -> Conv(w_back) ; v -> MatMul(d) -> MatMul(d_t): uses all four initializers."""
    o, i, kh, kw = w.shape
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[kh // 2, kw // 2] * 2),
        helper.make_node("Conv", ["h", "w_back"], ["y"], pads=[kh // 2, kw // 2] * 2),
        helper.make_node("MatMul", ["v", "d"], ["u"]),
        helper.make_node("MatMul", ["u", "d_t"], ["z"]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (w_back, "w_back"), (d, "d"), (d_t, "d_t"))]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, i, 9, 9]),
                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [None, d.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, i, 9, 9]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, d.shape[0]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(m: onnx.ModelProto, x: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["y", "z"], {"x": x, "v": v})


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 4, 3, 5)).astype(np.float32)  # non-square window: catches a swapped flip axis
    d = rng.normal(size=(32, 20)).astype(np.float32)
    return w, d


def test_derived_weights_become_ops_with_identical_outputs():
    w, d = _weights()
    m = _graph(w, _conv_back(w), d, np.ascontiguousarray(d.T))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    v = rng.normal(size=(3, 32)).astype(np.float32)
    before = _run(m, x, v)

    saved = share_weights(m)

    assert saved == w.nbytes + d.nbytes
    names = {i.name for i in m.graph.initializer}
    assert {"w", "d"} <= names and not {"w_back", "d_t"} & names
    onnx.checker.check_model(m, full_check=True)
    after = _run(m, x, v)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    assert share_weights(m) == 0  # nothing left to share


@pytest.mark.parametrize("case", ["perturbed", "flip-only", "small"])
def test_near_misses_are_left_alone(case):
    w, d = _weights()
    back, dt = _conv_back(w), np.ascontiguousarray(d.T)
    if case == "perturbed":
        back = back.copy()
        back[0, 0, 0, 0] += 1e-6
        dt = dt.copy()
        dt[-1, -1] = np.nextafter(dt[-1, -1], np.float32(np.inf))
    elif case == "flip-only":  # rotated but in/out not swapped: not a conv backward kernel
        w = np.random.default_rng(2).normal(size=(4, 4, 3, 3)).astype(np.float32)
        back = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        dt = np.random.default_rng(3).normal(size=d.T.shape).astype(np.float32)
    m = _graph(w, back, d, dt)
    assert share_weights(m, min_elements=10**6 if case == "small" else 256) == 0
    assert len(m.graph.initializer) == 4 and len(m.graph.node) == 4
