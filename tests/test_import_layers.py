"""The direction of imports between sub-packages (pyproject.toml [tool.importlinter]) holds, and the check
catches a wrong import when one is added."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_imports.py"


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), "--root", str(root)], capture_output=True, text=True)


def _copy_sources(dest: Path) -> None:
    """pyproject.toml and the .py files of every mapped folder, nothing else."""
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in mapping.values():
        for path in (ROOT / folder).rglob("*.py"):
            target = dest / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)


def test_every_import_contract_is_kept() -> None:
    done = _check(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("runtime/package.py", "from rwkv_deploy.export import package_builder", "Layers"),
    ("export/onnx_graph.py", "from rwkv_deploy.runtime import state", "meet only at the package format"),
    ("tokenization/base.py", "import torch", "never imports PyTorch"),
    ("package/manifest.py", "import onnx", "needs no onnx"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    _copy_sources(tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}\n")
    done = _check(tmp_path)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts")[-1]
    assert contract in broken.replace("\n", " ")
