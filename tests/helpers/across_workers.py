"""Expensive session fixtures made once per test run, also when pytest-xdist runs the tests in several worker
processes (`make test` runs two): the workers share one folder of the run and take turns through a file lock,
so a package exported by one worker is read, not exported again, by the other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock


def shared_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every worker of this run sees (beside the workers' own temporary folders); without xdist a
    fresh folder of this session."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp(name)
    root = tmp_path_factory.getbasetemp().parent / name
    root.mkdir(exist_ok=True)
    return root


def made_once(path: Path, make: Callable[[], object]) -> Path:
    """Run `make()` to create `path` unless it exists, one process at a time. `make` must create `path`
    atomically (export_package does: a staging folder, then a rename), or leave nothing."""
    with FileLock(f"{path}.lock"):
        if not os.path.lexists(path):
            make()
    return path
