"""Scale-out benchmark: fer-infer in one process against fer-infer --ray local with 1 and 2 workers.

The same N FER2013 crops (first N rows of ../shared/data/fer2013/fer2013.csv.gz, written as PNG files into a
temporary folder) go through each command, run as a subprocess with --faces crop and --out CSV. While it runs the
benchmark reads the resumable writer's progress record (OUT.progress.json, one commit per chunk of complete
files), so each run splits into a fixed cost (start until the first committed chunk: interpreter, model load,
Ray start-up and actor start) and a steady rate (first to last chunk). Peak memory is VmHWM from /proc: of the
fer-infer process, and of each Ray inference actor (ray::MapWorker...). Ray's own start-up is timed apart (a
fresh ``ray.init`` plus one remote call). CPU time (user + system) counts fer-infer and every process it
started, in total and from the first chunk on (steady), so that it does not depend on how busy the machine is.
Every output is compared with the single-process CSV.

    python bench/scale_bench.py [--n 10000] [--data ../shared/data/fer2013/fer2013.csv.gz]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from fer_runtime.machine import cpu_model
from fer_runtime.resume import progress_path
from fer_train.data import parse_pixels, read_csv_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
BIN = Path(sys.executable).parent


def write_crops(data: Path, n: int, folder: Path) -> None:
    """The first ``n`` rows of the FER2013 CSV (``.gz`` or plain) as PNG files, read by the training side's reader."""
    header, rows, lines = read_csv_rows(Path(data), ("pixels",))
    col = header.index("pixels")
    faces = parse_pixels(Path(data), lines[:n], [r[col] for r in rows[:n]])
    for i, face in enumerate(faces):
        cv2.imencode(".png", face)[1].tofile(folder / f"{i:05d}.png")


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _actor_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


TICK = os.sysconf("SC_CLK_TCK")


def _descendants_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every living descendant (Ray's raylet, GCS, workers...)."""
    stats = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(p.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
            except (OSError, IndexError, ValueError):
                pass
    out, todo = ({root: stats[root][1]} if root in stats else {}), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, cpu) in stats.items():
            if ppid == parent and pid not in out:
                out[pid] = cpu
                todo.append(pid)
    return out


def run(label: str, args: list[str], out: Path, n: int) -> dict:
    """Run fer-infer ``args`` writing ``out``; time it and sample progress, CPU time and memory every 50 ms.

    CPU time is the fer-infer process's own (from wait4) plus, for Ray, every process it started (sampled)."""
    progress = progress_path(out)
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "fer-infer"), *args, "--faces", "crop", "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks: list[tuple[float, int]] = []
    peak_main, peak_actor = 0.0, {}
    cpu_desc: dict[int, float] = {}
    cpu_first = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            done = json.loads(progress.read_text())["inputs_done"]
            if done and (not marks or marks[-1][1] != done):
                marks.append((time.perf_counter() - t0, done))
                if len(marks) == 1:
                    cpu_first = sum(cpu_desc.values())
        except (OSError, ValueError, KeyError):
            pass
        peak_main = max(peak_main, _hwm_mb(proc.pid))
        for pid, cpu in _descendants_cpu(proc.pid).items():
            cpu_desc[pid] = max(cpu_desc.get(pid, 0.0), cpu)
        for pid in _actor_pids():
            peak_actor[pid] = max(peak_actor.get(pid, 0.0), _hwm_mb(pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: exit {proc.returncode}")
    cpu_desc.pop(proc.pid, None)
    cpu = usage.ru_utime + usage.ru_stime + sum(cpu_desc.values())
    first_t, first_n = marks[0] if marks else (wall, n)
    # first to last committed chunk: the interpreter's and Ray's teardown after the last one is not work
    last_t, last_n = marks[-1] if marks else (wall, n)
    steady = (last_n - first_n) / (last_t - first_t) if last_t > first_t and last_n > first_n else float("nan")
    return {"label": label, "wall": wall, "rate": n / wall, "first": first_t, "steady": steady,
            "cpu_ms": cpu / n * 1000, "cpu_ms_steady": (cpu - cpu_first) / max(1, n - first_n) * 1000,
            "mem_main": peak_main,
            "mem_actor": max(peak_actor.values()) if peak_actor else None, "actors": len(peak_actor)}


def compare(ref: Path, other: Path) -> str:
    """How ``other``'s rows differ from ``ref``'s: text, labels, largest probability difference."""
    with open(ref, newline="") as f:
        a = list(csv.DictReader(f))
    with open(other, newline="") as f:
        b = list(csv.DictReader(f))
    if [r["path"] for r in a] != [r["path"] for r in b]:
        return "other rows or order"
    probs = [c for c in a[0] if c.startswith("p_")]
    text = sum(x != y for x, y in zip(a, b))
    labels = sum(x["label"] != y["label"] for x, y in zip(a, b))
    dp = max(abs(float(x[c] or 0) - float(y[c] or 0)) for x, y in zip(a, b) for c in probs)
    return f"{text} row(s) differ in text, {labels} in label, max |dp| {dp:.0e}"


def ray_startup(workers: int) -> float:
    code = ("import time, logging; t = time.perf_counter(); import ray; "
            f"ray.init(num_cpus={workers + 1}, include_dashboard=False, logging_level=logging.WARNING); "
            "ray.get(ray.remote(lambda: 1).remote()); print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="scale_bench_") as tmp:
        tmp = Path(tmp)
        crops = tmp / "crops"
        crops.mkdir()
        write_crops(a.data, a.n, crops)
        startup = ray_startup(2)
        rows = [run("fer-infer, 1 process", [str(crops)], tmp / "plain.csv", a.n),
                run("fer-infer, 1 process, --threads 1", [str(crops), "--threads", "1"], tmp / "plain1.csv", a.n),
                run("fer-infer --ray local --workers 1", [str(crops), "--ray", "local", "--workers", "1"],
                    tmp / "ray1.csv", a.n),
                run("fer-infer --ray local --workers 2", [str(crops), "--ray", "local", "--workers", "2"],
                    tmp / "ray2.csv", a.n)]
        diffs = {f: compare(tmp / "plain.csv", tmp / f) for f in ("plain1.csv", "ray1.csv", "ray2.csv")}

    ncpu = os.cpu_count()
    print(f"{a.n:,} FER2013 crops (48x48 PNG), --faces crop, shipped default model; {cpu_model()}, {ncpu} cores; "
          f"ray {ray.__version__}; load average at the end {os.getloadavg()[0]:.1f}")
    print()
    print("| command | wall s | images/s (end to end) | fixed cost s (to first chunk) | images/s (steady) "
          "| CPU ms per image: all / steady | peak RSS MB: driver | peak RSS MB: per worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        actor = f"{r['mem_actor']:.0f} ({r['actors']} actor(s))" if r["mem_actor"] else "–"
        print(f"| {r['label']} | {r['wall']:.1f} | {r['rate']:.0f} | {r['first']:.1f} | {r['steady']:.0f} "
              f"| {r['cpu_ms']:.2f} / {r['cpu_ms_steady']:.2f} | {r['mem_main']:.0f} | {actor} |")
    print()
    single1, ray1 = rows[1], rows[2]
    overhead_ms = ray1["cpu_ms_steady"] - single1["cpu_ms_steady"]
    print(f"Ray start-up (ray.init with 3 CPUs + one remote call, fresh process): {startup:.1f} s")
    print(f"Ray per-image overhead (steady CPU time per image, all processes, 1 worker against 1 process, both 1 onnxruntime thread): {overhead_ms:+.2f} ms")
    for f, d in diffs.items():
        print(f"{f} against the single-process CSV: {d}")


if __name__ == "__main__":
    main()
