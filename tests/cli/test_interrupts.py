"""Interrupted and concurrent runs (issue 14): SIGTERM and SIGHUP end a command like SIGINT (temporary folders
removed, exit 128 + n); what a SIGKILLed export leaves is recognised and removed by the next run on the same
--out; two exports to one --out cannot both claim success."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from rwkv_deploy.cli.errors import one_line_errors
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.package.archive import create_archive
from rwkv_deploy.package.verify import verify_package
from rwkv_deploy.staging import MARKER
from tests.helpers.small_packages import small_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


def cli(*args: str | Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rwkv_deploy.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})))


def wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the command ended first: {process.communicate()[1].decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the command")
        time.sleep(0.05)


def staging_of(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.tmp-")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pth", "7")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_export_removes_the_staging_folder_and_exits_128_plus_n(checkpoint, tmp_path, signum):
    process = cli("export", checkpoint, "--out", tmp_path / "out", "--quiet")
    wait_for(lambda: staging_of(tmp_path, "out"), process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert stderr.decode().strip().splitlines() == [
        f"error: interrupted by {signal.Signals(signum).name}; temporary files were removed"]
    assert list(tmp_path.iterdir()) == []  # no staging folder, no lock file, no half package


def test_what_a_killed_export_left_is_removed_by_the_next_export_to_the_same_out(checkpoint, tmp_path):
    process = cli("export", checkpoint, "--out", tmp_path / "out", "--quiet")
    wait_for(lambda: staging_of(tmp_path, "out"), process)
    process.kill()
    process.wait()
    (leftover,) = staging_of(tmp_path, "out")
    assert (leftover / MARKER).is_file()
    (tmp_path / ".other.tmp-1-x").mkdir()  # not ours to touch: another target's name
    export_package(checkpoint, tmp_path / "out", ExportOptions(tokenizer="none"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1-x", "out"]
    assert verify_package(tmp_path / "out") == []


def test_two_exports_to_one_new_out_cannot_both_succeed(checkpoint, tmp_path):
    runs = [cli("export", checkpoint, "--out", tmp_path / "out", "--quiet", "--tokenizer", "none") for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1].decode()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(loser.strip().splitlines()) == 1
    assert any(why in loser for why in ("another rwkv-deploy run (pid", "appeared while it was being written",
                                         "exists and is not empty")), loser
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert verify_package(tmp_path / "out") == []


def test_sigterm_during_generate_of_an_archive_removes_the_extracted_copy(shared_package, tmp_path):
    archive = tmp_path / "model.zip"
    create_archive(shared_package("7", "fp32", tokenizer="bytes", prefill=True), archive)
    temp = tmp_path / "tmp"
    temp.mkdir()
    process = cli("generate", archive, "--prompt", "Hello", "--max-tokens", "1000000", env={"TMPDIR": str(temp)})
    def extracted() -> bool:
        try:
            return any(p.name == "package" for d in temp.iterdir() if d.is_dir() for p in d.iterdir())
        except OSError:  # a folder went away while we looked
            return False

    wait_for(extracted, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-3000:]
    assert stderr.decode().strip().splitlines()[-1] == "error: interrupted by SIGTERM; temporary files were removed"
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []  # onnxruntime keeps its own $TMPDIR/.ses


def test_a_command_that_swallowed_its_signal_still_fails_with_128_plus_n(capsys):
    @one_line_errors
    def careless_command() -> str:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException:  # noqa: BLE001 - a library that swallows everything
            pass
        return "finished as if nothing happened"

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as exited:
        careless_command()
    assert exited.value.exit_code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "error: interrupted by SIGTERM; temporary files were removed\n"
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back
