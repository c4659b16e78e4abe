"""The layout's never-arrows are live: import-linter keeps them on this tree and breaks on a wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_LIBRARY = {"__init__", "__main__", "cli", "study", "passes", "export"}


def _contracts(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` in `root`, reading the package found there."""
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run([str(bin_dir / "lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env=env, timeout=120)


def _copy_tree(dst: Path) -> Path:
    for name in ("fxapprox", "passes", "export"):  # fxapprox/passes and fxapprox/export stay symlinks
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_contracts_hold_on_this_tree():
    done = _contracts(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept, 0 broken" in done.stdout


def test_passes_and_export_sit_in_the_package_as_installed():
    for name in ("passes", "export"):
        assert (ROOT / "fxapprox" / name).resolve() == (ROOT / name).resolve()


def test_every_library_module_is_under_the_contract():
    """A new module (or subpackage, like `stages`) of the library must be listed, or it could import the
    study tools unchecked."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    listed = {m.removeprefix("fxapprox.") for m in config["source_modules"]}
    packages = {p.parent.name for p in (ROOT / "fxapprox").glob("*/__init__.py")}
    modules = ({p.stem for p in (ROOT / "fxapprox").glob("*.py")} | packages) - OUTSIDE_LIBRARY
    assert modules == listed


@pytest.mark.parametrize(("module", "wrong_import", "contract"), [
    ("fxapprox/compression.py", "from fxapprox.study import ranking", "the library never imports the study tools"),
    ("fxapprox/stats.py", "from fxapprox.cli import common", "the library never imports the study tools"),
    ("passes/replace_span.py", "from fxapprox import stats", "passes never see calibration data"),
    ("export/onnx.py", "from fxapprox.passes import dead_code", "export never imports passes"),
    ("export/flops.py", "from fxapprox.study import assets", "passes and export never import the study tools"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path, module, wrong_import, contract):
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    done = _contracts(root)
    assert done.returncode != 0
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout
