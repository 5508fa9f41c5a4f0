"""fer-export killed mid-write, and fer-train / fer-export under a file-size limit: earlier output survives and the
error is one line. Real processes, real SIGKILL, real RLIMIT_FSIZE (what ``ulimit -f`` sets)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytestmark = pytest.mark.tf

from fer_runtime.manifest import MANIFEST_NAME, read_manifest  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
TIMEOUT = 900
PADDING_MB = 100  # an extra file in models/ so that staging the folder takes long enough to be killed in


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _consistent(folder: Path) -> bool:
    """Every file the manifest lists has the recorded hash."""
    man = read_manifest(folder)
    return all(hashlib.sha256((folder / n).read_bytes()).hexdigest() == e.sha256 for n, e in man.files.items())


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny Keras models with different weights."""
    import keras

    from fer_train.models import ModelConfig, build_model

    d = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        m = build_model(ModelConfig(filters=4, blocks=2, convs_per_block=1, units=8))
        paths.append(d / f"m{seed}.keras")
        m.save(paths[-1])
    return paths[0], paths[1]


def _export_cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fer_export.cli", str(model), "--out", str(out), "--verify-count", "10"]


def test_fer_export_killed_mid_write_leaves_models_whole(members, tmp_path: Path) -> None:
    first, second = members
    out = tmp_path / "models"
    res = subprocess.run(_export_cmd(first, out), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    with open(out / "padding.bin", "wb") as f:
        f.write(os.urandom(1 << 20) * PADDING_MB)
    before = _snapshot(out)
    old_manifest, stats = (out / MANIFEST_NAME).read_bytes(), _stats(out)

    proc = subprocess.Popen(_export_cmd(second, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at, deadline = None, time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        staged = [s / MANIFEST_NAME for s in tmp_path.glob(f".{out.name}.stage-*")]
        if any(m.exists() and m.read_bytes() != old_manifest for m in staged):
            killed_at = "new manifest staged, folder not yet exchanged"
        elif _stats(out) != stats:
            killed_at = "models/ changed"
        if killed_at:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_at is not None, "the export finished before it could be killed"
    after = _snapshot(out)
    # the promise: the previous folder exactly, or a complete new one; never a mix
    assert after == before or (_consistent(out) and after[MANIFEST_NAME] != before[MANIFEST_NAME]), killed_at
    assert after == before, f"killed at: {killed_at}; the folder was exchanged already"
    assert _consistent(out)

    res = subprocess.run(_export_cmd(second, out), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert _consistent(out) and _snapshot(out)[MANIFEST_NAME] != before[MANIFEST_NAME]
    assert _snapshot(out)["padding.bin"] == before["padding.bin"]  # other files of the folder are kept


def _stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) per file: any file replaced, rewritten, added or removed changes it. Cheap to poll."""
    return {e.name: (e.inode(), e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()}


def test_fer_export_under_a_file_size_limit_is_one_line_and_keeps_models(members, tmp_path: Path) -> None:
    first, second = members
    out = tmp_path / "models"
    assert subprocess.run(_export_cmd(first, out), capture_output=True, timeout=TIMEOUT).returncode == 0
    before = _snapshot(out)
    biggest = max((out / n).stat().st_size for n in before)
    res = subprocess.run(_export_cmd(second, out), capture_output=True, text=True, timeout=TIMEOUT,
                         preexec_fn=_limit_file_size(biggest // 2))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "File too large" in lines[-1], lines[-5:]
    assert not any("Traceback" in l for l in lines)
    assert _snapshot(out) == before and _consistent(out)
    assert not list(tmp_path.glob(f".{out.name}.stage-*")), "the stage was left behind"


def test_fer_train_under_a_file_size_limit_keeps_the_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["fit", "--data", str(FIX), "--out", str(run), "--filters", "8", "--blocks", "2", "--convs-per-block", "1",
            "--units", "16", "--epochs", "1", "--batch-size", "16", "--limit-train", "200", "--no-augment"]
    res = subprocess.run([sys.executable, "-m", "fer_train.cli", *args], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    conf = json.loads((run / "config.json").read_text())
    conf["train"]["epochs"] = 3
    (run / "config.json").write_text(json.dumps(conf))
    keep = {n: (run / n).read_bytes() for n in ("best.keras", "last.keras", "history.csv")}
    limit = min(len(keep["best.keras"]), len(keep["last.keras"])) // 2  # history and config fit, checkpoints do not
    res = subprocess.run([sys.executable, "-m", "fer_train.cli", "fit", "--resume", str(run)], capture_output=True,
                         text=True, timeout=TIMEOUT, preexec_fn=_limit_file_size(limit))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "File too large" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for name in ("best.keras", "last.keras"):
        assert (run / name).read_bytes() == keep[name], f"{name} changed"
    # nothing lost: the run continues from its last complete epoch once there is room again
    res = subprocess.run([sys.executable, "-m", "fer_train.cli", "fit", "--resume", str(run)], capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    from fer_train import runs

    assert [int(r["epoch"]) for r in runs.read_history(run)] == [1, 2, 3]
