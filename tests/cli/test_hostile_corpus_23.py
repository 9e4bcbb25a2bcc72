"""Issue 23's Python-side classes (tests/helpers/hostile_cases_23.py) through the real CLI: each case ends with
its exit code and exactly one line naming the file and the problem, no traceback, nothing written or left
behind outside what it may change (a snapshot before and after)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rwkv_deploy.package.archive import create_archive
from tests.helpers.hostile import Case, Material, judge, run_subprocess, snapshot
from tests.helpers.hostile_cases_23 import CASES_23


@pytest.fixture(scope="module")
def material(shared_package, tmp_path_factory) -> Material:
    package = shared_package("7", "fp32", tokenizer="bytes", prefill=True)
    archive = tmp_path_factory.mktemp("hostile23") / "model.zip"
    create_archive(package, archive)
    return Material(package, package.parent / "v7-seed0.pth", archive)


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
