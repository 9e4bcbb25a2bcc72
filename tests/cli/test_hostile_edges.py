"""The smaller hostile-input edges of the CLI (issue 23's "badly handled" list): limits given as absurd numbers,
thread counts that would start thousands of threads, a reader that goes away, control characters in names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_deploy import limits
from rwkv_deploy.cli.errors import printable
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

CLI = [sys.executable, "-m", "rwkv_deploy.cli.main"]


@pytest.mark.parametrize("raw", ["1e400", "nan", "inf", "-5", "0", "2.5", "abc", "9" * 400])
def test_a_limit_variable_of_an_absurd_value_is_one_line(monkeypatch, raw):
    monkeypatch.setenv(limits.MAX_PARAMS_ENV, raw)
    with pytest.raises(limits.LimitError, match=f"environment variable {limits.MAX_PARAMS_ENV}="):
        limits.max_params()


def test_a_limit_variable_in_any_plain_spelling_is_taken(monkeypatch):
    for raw, value in (("1000", 1000), ("1e9", 10**9), ("50_000_000_000", 5 * 10**10)):
        monkeypatch.setenv(limits.MAX_PARAMS_ENV, raw)
        assert limits.max_params() == value


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_thousands_of_threads_are_refused_in_one_line(shared_package):
    done = run("generate", str(shared(shared_package, "7")), "--prompt", "a", "-n", "1", "--threads", "2000")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "threads must be 1 to 256, got 2000" in lines[0]


def test_a_reader_that_goes_away_is_not_an_error(shared_package):
    """`generate ... | head -c1`: the pipe closes after one byte; the command ends quietly with exit 0."""
    package = shared(shared_package, "7")
    pipeline = subprocess.run(f"{sys.executable} -m rwkv_deploy.cli.main generate {package} --prompt a -n 200 "
                              f"--greedy | head -c1; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                              capture_output=True, text=True, timeout=300)
    assert pipeline.returncode == 0, pipeline.stderr
    assert "Broken pipe" not in pipeline.stderr and "Traceback" not in pipeline.stderr


def test_control_characters_in_an_error_line_are_shown_not_sent_to_the_terminal(tmp_path: Path):
    assert printable("a\x1b[31mred\x00\rb é") == "a\\x1b[31mred\\x00\\rb é"
    hostile = tmp_path / "pkg\x1b[2J\x07"
    hostile.mkdir()
    done = run("verify", str(hostile))
    assert done.returncode != 0
    assert "\x1b" not in done.stderr + done.stdout and "\x07" not in done.stderr + done.stdout
    assert "\\x1b[2J" in done.stderr + done.stdout
