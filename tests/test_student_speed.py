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
