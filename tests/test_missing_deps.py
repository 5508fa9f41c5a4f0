"""A command whose optional packages are not installed says which extra to install, in one line (exit 2);
``--help`` works without them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
# as if the 'train' extra were not installed: a real absent package raises ModuleNotFoundError with its name
MISSING = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'onnx'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
"""


def _run(entry: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    module, func = entry.split(":")
    code = f"{MISSING}\nsys.argv = {argv!r}\nfrom {module} import {func}\n{func}()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry, argv, package", [
    ("fer_train.cli:main", ["fer-train", "fit", "--data", str(FIX), "--out", "{tmp}/run", "--epochs", "1"], "tensorflow"),
    ("fer_train.cli:main", ["fer-train", "evaluate", "{tmp}/run"], "tensorflow"),
    ("fer_export.cli:main", ["fer-export", "{tmp}/run", "--out", "{tmp}/models"], "tensorflow"),
    ("fer_export.quantize_cli:main", ["fer-quantize", "--data", str(FIX), "--model-dir", "{tmp}/models"], "onnx"),
    ("fer_analysis.cli:main", ["fer-analyze", "confusion", "{tmp}/run", "--out", "{tmp}/models"], "tensorflow"),
])
def test_missing_optional_package_is_one_line_naming_the_extra(tmp_path: Path, entry: str, argv: list[str],
                                                                package: str) -> None:
    res = _run(entry, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {package} is not installed; install the 'train' extra: pip install 'fer-toolkit[train]' "
        "(or -e '.[train]' in a checkout)"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("entry, command", [
    *(("fer_train.cli:main", c) for c in ("fit", "evaluate", "ensemble", "self-train", "predict")),
    *(("fer_analysis.cli:main", c) for c in ("confusion", "saliency", "report")),
])
def test_subcommand_help_needs_no_tensorflow(entry: str, command: str) -> None:
    prog = "fer-train" if entry.startswith("fer_train") else "fer-analyze"
    res = _run(entry, [prog, command, "--help"])
    assert res.returncode == 0, res.stderr
    assert f"Usage: {prog} {command}" in res.stdout


def test_every_extra_named_in_errors_installs_that_module() -> None:
    # errors.EXTRAS maps a module to the extra that installs it; pyproject.toml's extras are the truth
    import re
    import tomllib

    from fer_runtime.errors import EXTRAS

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    ships = {"keras": "tensorflow"}  # a module that arrives inside another package
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module}: no extra {extra!r} in pyproject.toml"
        dists = {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("-", "_") for req in extras[extra]}
        assert ships.get(module, module) in dists, f"{module}: the {extra!r} extra installs {sorted(dists)}"
