"""bench/student_speed.py: candidate specs become the model configs they name, timed as our forward graph."""
from __future__ import annotations


import numpy as np
import pytest

from bench_script import load_bench  # noqa: E402


def _bench():
    return load_bench("student_speed")


def test_candidate_specs_name_filters_convs_head_and_blocks():
    parse = _bench().parse_candidate
    assert parse("28x1") == dict(arch="cnn", filters=28, convs_per_block=1, blocks=4, units=256)
    assert parse("16x2:gap:b3") == dict(arch="cnn", filters=16, convs_per_block=2, blocks=3, units=256, head="gap")
    for bad in ("28", "28y1", "28x1:max", "ax1", "16x2:bx"):
        with pytest.raises(SystemExit, match="bad candidate"):
            parse(bad)


def test_candidate_session_runs_the_exported_forward_graph():
    from fer_train.models import ModelConfig, build_model

    mod = _bench()
    cfg = mod.parse_candidate("8x1:gap:b2")
    sess, params = mod.candidate_session(cfg)
    assert params == build_model(ModelConfig(**cfg)).count_params()
    probs = sess.run(["probs"], {"image": np.zeros((3, 48, 48, 1), np.float32)})[0]
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_int8_candidate_session_runs_the_quantized_graph(monkeypatch):
    from fer_export import quantize

    mod = _bench()
    made = []
    real = quantize.quantize_graph

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(quantize, "quantize_graph", spy)
    calib = np.random.default_rng(0).integers(0, 256, (40, 48, 48, 1)).astype(np.float32)
    sess, _ = mod.candidate_session(mod.parse_candidate("8x1:gap:b2"), calib)
    (proto,) = made
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and "Softmax" in ops  # the convs run in int8, softmax in float
    probs = sess.run(["probs"], {"image": calib[:5]})[0]
    assert probs.shape == (5, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
