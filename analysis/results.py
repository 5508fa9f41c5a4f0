"""What every analysis writes beside its figures: a CSV of the numbers and a JSON summary.

Each ``analyze_*`` function returns :func:`result`: ``{"analysis", "figures", "outputs", "summary"}``,
where ``summary`` is also what its ``<name>.json`` holds. Files are written atomically.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from fer_runtime.atomic import atomic_write
from fer_train import runs


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV with ``header`` and ``rows`` (floats to 6 significant digits)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    atomic_write(path, buf.getvalue())
    return path


def result(name: str, figures: Sequence[Path], data: Sequence[Path], summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write ``out/<name>.json`` (the summary) and return the analysis's result dict."""
    js = out / f"{name}.json"
    runs.write_json(js, summary)
    return {"analysis": name, "figures": [str(f) for f in figures],
            "outputs": [str(p) for p in [*figures, *data, js]], "summary": summary}
