"""fer-train fit --strategy multiworker: two real worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

from fer_train import runs  # noqa: E402
from fer_train.distribute import check_tf_config  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
DIGEST = re.compile(r"final weights sha256 ([0-9a-f]{64})")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_workers_train_one_epoch_in_sync(tmp_path: Path) -> None:
    """Both exit 0, only the chief writes the run (one epoch of history), both end with the same weights."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fer_train.cli", "fit", "--data", str(FIX), "--out", str(run),
           "--strategy", "multiworker", "--filters", "4", "--blocks", "2", "--convs-per-block", "1", "--units", "8",
           "--epochs", "1", "--batch-size", "32", "--no-augment", "--limit-train", "128", "--json"]
    procs = []
    for i in range(2):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600))
        finally:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert len(runs.read_history(run)) == 1
    assert (run / runs.LAST).exists() and (run / runs.CONFIG).exists()
    worker_run = Path(json.loads(outs[1][0].strip().splitlines()[-1])["run"])
    assert worker_run != run and not worker_run.exists()  # worker 1 wrote only to its own temp copy, now removed
    digests = [DIGEST.search(err) for _, err in outs]
    assert all(digests), outs[0][1][-2000:]
    assert digests[0].group(1) == digests[1].group(1)


def test_tf_config_is_checked() -> None:
    with pytest.raises(ValueError, match="TF_CONFIG"):
        check_tf_config({})
    with pytest.raises(ValueError, match="task.index 2"):
        check_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                  "task": {"type": "worker", "index": 2}})})
    assert check_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                                     "task": {"type": "worker", "index": 0}})})["task"]["index"] == 0
