"""Issue 14's hostile and careless inputs: every case ends with its exit code and exactly one line naming the
file and the problem, no traceback, and nothing under its folder changed except what it may change (a
snapshot before and after); no payload ever runs. The corpus is tests/helpers/hostile_cases.py; the same
cases give the before/after counts with scripts/hostile_census.py."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.archive import create_archive
from tests.helpers.hostile import Case, Material, Outcome, judge, run_subprocess, snapshot
from tests.helpers.hostile_cases import CASES

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture(scope="module")
def material(shared_package, tmp_path_factory) -> Material:
    package = shared_package("7", "fp32", tokenizer="bytes", prefill=True)
    archive = tmp_path_factory.mktemp("hostile") / "model.zip"
    create_archive(package, archive)
    return Material(package, package.parent / "v7-seed0.pth", archive)


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_in_process(case: Case, root: Path, argv: list[str]) -> Outcome:
    with _cwd(root / case.cwd):
        result = CliRunner().invoke(app, argv, input=case.stdin, env=case.env or None)
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    stderr = result.stderr
    if escaped:
        stderr += "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr, escaped)


SUITE = [c for c in CASES if not c.census_only]


@pytest.mark.parametrize("case", SUITE, ids=[c.name for c in SUITE])
def test_hostile_input(case: Case, material: Material, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    argv = case.build(root, material)
    before = snapshot(root)
    if case.subprocess_only:
        outcome = run_subprocess(case, root, argv, sys.executable)
    else:
        outcome = run_in_process(case, root, argv)
    verdict = judge(case, outcome, before, snapshot(root), root)
    assert verdict.ok, (f"{case.name}: {verdict}\nexit {outcome.exit_code}\nstdout: {outcome.stdout[-2000:]}\n"
                        f"stderr: {outcome.stderr[-3000:]}")
