"""Reliability figures of fer-infer: the fuzz corpus, huge images (peak RSS), and repeated SIGKILL + --resume.

    python bench/reliability.py [--model-dir models] [--kills 5] [--files 600]

Prints one Markdown table. Everything runs in subprocesses of ``fer-infer`` (the way users run it); peak RSS is
that child's own ``ru_maxrss`` (``os.wait4``). Needs only the runtime (no TensorFlow) and the committed images.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_corpus import EXAMPLES, build_corpus, png_of_zeros  # noqa: E402

from fer_runtime.images import DEFAULT_MAX_PIXELS  # noqa: E402
from fer_runtime.resume import partial_path, progress_path  # noqa: E402
from fer_runtime.machine import cpu_model  # noqa: E402

NOISE = ("libpng", "Corrupt JPEG", "Premature end", "[ WARN", "[ERROR", "Traceback")


def infer_cmd(model_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fer_runtime.cli", *args, "--model-dir", str(model_dir), "--device", "cpu", "-q"]


def run_measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS MB of the child, seconds, stderr)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t0, text


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fuzz(model_dir: Path, work: Path) -> list[tuple[str, str]]:
    cases = build_corpus(work / "corpus")
    out = work / "fuzz.csv"
    code, rss, secs, err = run_measured(infer_cmd(model_dir, str(work / "corpus"), "--out", str(out), "--faces", "crop"))
    rows = rows_of(out) if out.exists() else []
    names = [Path(r["path"]).name for r in rows]
    expected = {c.name for c in cases}
    lost = len(expected - set(names))
    extra = len(names) - len(set(names)) + len(set(names) - expected)
    predicted = sum(1 for r in rows if r["label"])
    noise = sum(1 for line in err.splitlines() if any(n in line for n in NOISE))
    return [("fuzz corpus: inputs (kinds)", f"{len(cases)} ({len({c.kind for c in cases})})"),
            ("fuzz corpus: predictions / error rows", f"{predicted} / {len(rows) - predicted}"),
            ("fuzz corpus: rows lost / duplicated", f"{lost} / {extra}"),
            ("fuzz corpus: crashes (exit code not 0/1)", str(int(code not in (0, 1)))),
            ("fuzz corpus: decoder-noise lines on stderr", str(noise)),
            ("fuzz corpus: wall time (s), peak RSS (MB)", f"{secs:.1f}, {rss:.0f}")]


def huge(model_dir: Path, work: Path) -> list[tuple[str, str]]:
    side = int(DEFAULT_MAX_PIXELS ** 0.5)  # the largest square image the default limit accepts
    result = []
    (work / "small").mkdir()
    shutil.copy(EXAMPLES / "happy_0.png", work / "small" / "face.png")
    cases = [("48x48 face crop (baseline)", work / "small", [])]
    for name, w, h, ch in (("refused.png", 20000, 20000, 1), ("largest_gray.png", side, side, 1),
                           ("largest_bgr.png", side, side, 3)):
        d = work / name.removesuffix(".png")
        d.mkdir()
        (d / name).write_bytes(png_of_zeros(w, h, ch))
        what = f"{w}x{h} {'gray' if ch == 1 else 'RGB'} PNG ({w * h / 1e6:.0f} MP)"
        cases.append((what, d, []))
    for what, folder, extra in cases:
        for faces in ("crop", "auto"):
            out = work / f"{folder.name}_{faces}.csv"
            code, rss, secs, err = run_measured(infer_cmd(model_dir, str(folder), "--out", str(out), "--faces", faces,
                                                          *extra))
            row = rows_of(out)[0] if out.exists() and rows_of(out) else {}
            verdict = ("refused: " + row["error"][:40] + "...") if row.get("error") else \
                (f"label {row.get('label') or '-'}, source {row.get('source')}" if row else f"exit {code}: {err[-80:]}")
            result.append((f"{what}, --faces {faces}: peak RSS (MB), s", f"{rss:.0f}, {secs:.1f} ({verdict})"))
    return result


def kills(model_dir: Path, work: Path, n_kills: int, n_files: int) -> list[tuple[str, str]]:
    import cv2
    import numpy as np

    folder = work / "many"
    folder.mkdir()
    crops = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(EXAMPLES.glob("*_0.png"))]
    for i in range(n_files):
        cv2.imwrite(str(folder / f"f_{i:05d}.png"), np.roll(crops[i % len(crops)], i % 5, axis=1))
    ref, out = work / "ref.csv", work / "killed.csv"
    base = infer_cmd(model_dir, str(folder), "--faces", "crop", "--batch-size", "8")
    subprocess.run([*base, "--out", str(ref)], check=True)
    rng = random.Random(15)
    survived, attempts = 0, 0
    resume = []
    while survived < n_kills and attempts < 4 * n_kills:
        attempts += 1
        proc = subprocess.Popen([*base, "--out", str(out), *resume], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))  # start-up takes about 1-2 s: some kills land before any row
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            survived += 1
            assert not out.exists(), "a killed run left a partial output"
        else:
            break
        resume = ["--resume"]
    subprocess.run([*base, "--out", str(out), *resume], check=True)
    got, want = rows_of(out), rows_of(ref)
    lost = len({r["path"] for r in want} - {r["path"] for r in got})
    dup = len(got) - len({r["path"] for r in got})
    same = sum(a["label"] == b["label"] for a, b in zip(got, want))
    return [(f"SIGKILL + --resume on {n_files} files: kills survived", str(survived)),
            ("  rows lost / duplicated / labels equal to an uninterrupted run",
             f"{lost} / {dup} / {same} of {len(want)}"),
            ("  partial or progress file left after completion",
             str(partial_path(out).exists() or progress_path(out).exists()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--files", type=int, default=600)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fer-reliability-"))
    try:
        rows = fuzz(a.model_dir, work) + huge(a.model_dir, work) + kills(a.model_dir, work, a.kills, a.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Reliability benchmark: {cpu_model()}, {os.cpu_count()} CPU; pixel limit {DEFAULT_MAX_PIXELS:,}; "
          f"model dir {a.model_dir}\n")
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
    main()
