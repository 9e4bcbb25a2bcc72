"""Issue 23's Python-side classes (tests/helpers/hostile_cases_23.py) through the real CLI: each case ends with
its exit code and exactly one line naming the file and the problem, no traceback, nothing written or left
behind outside what it may change (a snapshot before and after)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rwkv_deploy.package.archive import create_archive
from tests.helpers.golden import golden_package
from tests.helpers.hostile import Case, Material, judge, run_subprocess, snapshot
from tests.helpers.hostile_cases_23 import CASES_23


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Material:
    """The golden RWKV-7 package (no case here reads a checkpoint: the one named does not exist)."""
    package = golden_package("v7-fp32")
    archive = tmp_path_factory.mktemp("hostile23") / "model.zip"
    create_archive(package, archive)
    return Material(package, archive.parent / "no-checkpoint.pth", archive)


@pytest.mark.parametrize("case", CASES_23, ids=[c.name for c in CASES_23])
def test_hostile_input_of_issue_23(case: Case, material: Material, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    argv = case.build(root, material)
    before = snapshot(root)
    outcome = run_subprocess(case, root, argv, sys.executable)  # the real CLI, in its own process
    verdict = judge(case, outcome, before, snapshot(root), root)
    assert verdict.ok, (f"{case.name}: {verdict}\nexit {outcome.exit_code}\nstdout: {outcome.stdout[-2000:]}\n"
                        f"stderr: {outcome.stderr[-3000:]}")
