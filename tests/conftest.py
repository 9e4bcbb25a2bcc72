"""Make the repository root importable so tests can `import tests.helpers...` under --import-mode=importlib,
and share the small exported packages that tests only read."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


@pytest.fixture(scope="session")
def shared_package(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`shared_package("7", "fp16", prefill=True)`: a small random package exported once per test session
    (tests.helpers.small_packages.export_small). Read it, never change it: copy it first (shutil.copytree)."""
    from tests.helpers.small_packages import export_small

    root = tmp_path_factory.mktemp("shared-packages")
    cache: dict[tuple, Path] = {}

    def get(version: str, precision: str = "fp32", seed: int = 0, **options) -> Path:
        key = (version, precision, seed, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = export_small(root, version, precision, seed, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def bundled_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled RWKV-7 byte-level model exported once per session, fp32 (read it; copy it to change it)."""
    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from rwkv_deploy.models.bundled import bundled_checkpoint

    out = tmp_path_factory.mktemp("bundled") / "tiny"
    export_package(bundled_checkpoint(), out, ExportOptions())
    return out
