"""fer_export.share: a variant's graphs keep each weight once, in one weights file, and compute the same numbers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fer_export.share import ALIGN, internalize, store_once
from fer_runtime.model_files import VerifiedGraph

WEIGHTS = "w.onnx_data"


def _conv_back(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _model(nodes: list, inits: dict[str, np.ndarray], channels: int, width: int) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, 9, 9]),
                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [None, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 9, 9]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, None])],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _forward(w: np.ndarray, d: np.ndarray) -> onnx.ModelProto:
    """x -> Conv(w) ; v -> MatMul(d): a "forward graph"."""
    kh, kw = w.shape[2:]
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[kh // 2, kw // 2] * 2),
                   helper.make_node("MatMul", ["v", "d"], ["z"])], {"w": w, "d": d}, w.shape[1], d.shape[0])


def _backward(w: np.ndarray, w_back: np.ndarray, d: np.ndarray, d_t: np.ndarray) -> onnx.ModelProto:
    """x -> Conv(w) -> Conv(w_back) ; v -> MatMul(d) -> MatMul(d_t): a "saliency graph" with both kernels."""
    kh, kw = w.shape[2:]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[kh // 2, kw // 2] * 2),
             helper.make_node("Conv", ["h", "w_back"], ["y"], pads=[kh // 2, kw // 2] * 2),
             helper.make_node("MatMul", ["v", "d"], ["u"]),
             helper.make_node("MatMul", ["u", "d_t"], ["z"])]
    return _model(nodes, {"w": w, "w_back": w_back, "d": d, "d_t": d_t}, w.shape[1], d.shape[0])


def _run(m: onnx.ModelProto, files: dict[str, bytes] | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, m.graph.input[0].type.tensor_type.shape.dim[1].dim_value, 9, 9)).astype(np.float32)
    v = rng.normal(size=(3, m.graph.input[1].type.tensor_type.shape.dim[1].dim_value)).astype(np.float32)
    s = VerifiedGraph(None, m.SerializeToString(), files or {}).session(["CPUExecutionProvider"])  # type: ignore[arg-type]
    return s.run(["y", "z"], {"x": x, "v": v})


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 4, 3, 5)).astype(np.float32)  # non-square window: catches a swapped flip axis
    d = rng.normal(size=(32, 20)).astype(np.float32)
    return w, d


def _inline_float_bytes(m: onnx.ModelProto) -> int:
    return sum(len(i.raw_data) for i in m.graph.initializer
               if i.data_location != TensorProto.EXTERNAL and i.data_type == TensorProto.FLOAT)


def test_each_weight_is_stored_once_across_graphs_with_identical_outputs():
    w, d = _weights()
    fwd, sal = _forward(w, d), _backward(w, _conv_back(w), d, np.ascontiguousarray(d.T))
    before = [_run(fwd), _run(sal)]

    blob = store_once([fwd, sal], WEIGHTS)

    assert w.nbytes + d.nbytes <= len(blob) < w.nbytes + d.nbytes + ALIGN  # w and d once; w_back, d_t derived
    assert _inline_float_bytes(fwd) == 0 and _inline_float_bytes(sal) == 0
    after = [_run(fwd, {WEIGHTS: blob}), _run(sal, {WEIGHTS: blob})]
    for got, want in zip(after, before):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    for m, want in zip((fwd, sal), before):
        whole = internalize(onnx.load_from_string(m.SerializeToString()), {WEIGHTS: blob})
        onnx.checker.check_model(whole, full_check=True)
        for a, b in zip(_run(whole), want):
            np.testing.assert_array_equal(a, b)


def test_a_graph_without_its_weights_file_does_not_load():
    w, d = _weights()
    fwd = _forward(w, d)
    store_once([fwd], WEIGHTS)
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    with pytest.raises(Fail, match=r"[Ee]xternal data .*w\.onnx_data"):  # the initializer lives in the missing file
        _run(fwd)


@pytest.mark.parametrize("case", ["perturbed", "flip-only", "small"])
def test_near_misses_are_stored_separately(case):
    w, d = _weights()
    back, dt = _conv_back(w), np.ascontiguousarray(d.T)
    if case == "perturbed":
        back = back.copy()
        back[0, 0, 0, 0] += 1e-6
        dt = dt.copy()
        dt[-1, -1] = np.nextafter(dt[-1, -1], np.float32(np.inf))
    elif case == "flip-only":  # rotated but in/out not swapped: not a conv backward kernel
        w = np.random.default_rng(2).normal(size=(8, 8, 3, 3)).astype(np.float32)
        back = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        dt = np.random.default_rng(3).normal(size=d.T.shape).astype(np.float32)
    sal = _backward(w, back, d, dt)
    before = _run(sal)
    blob = store_once([sal], WEIGHTS, min_elements=10**6 if case == "small" else 256)
    assert len(sal.graph.node) == 4  # no derivation ops
    if case == "small":
        assert blob == b"" and _inline_float_bytes(sal) == 2 * (w.nbytes + d.nbytes)
    else:
        assert len(blob) >= 2 * (w.nbytes + d.nbytes)
    for a, b in zip(_run(sal, {WEIGHTS: blob}), before):
        np.testing.assert_array_equal(a, b)
