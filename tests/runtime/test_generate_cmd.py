"""`rwkv-deploy generate`: text on stdout, a tokens/s line on stderr, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
SUMMARY = re.compile(r"^\[(\d+) tokens, \d+\.\d tokens/s\]$")


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    torch.save(make_checkpoint("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=4), root / "m.pth")
    export_package(root / "m.pth", root / "out", ExportOptions())
    return root / "out"


def library_text(package_dir: Path, prompt: str, **settings) -> str:
    package = DeploymentPackage.open(package_dir)
    return Generator(OnnxStepBackend(package), package.tokenizer).generate(prompt, **settings).text


def test_generate_prints_the_text_and_a_tokens_per_second_line(package_dir):
    result = runner.invoke(app, ["generate", str(package_dir), "--prompt", "Hello", "--max-tokens", "12", "--greedy"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == library_text(package_dir, "Hello", max_tokens=12, temperature=0) + "\n"
    summary = SUMMARY.match(result.stderr.strip().splitlines()[-1])
    assert summary and summary.group(1) == "12"


def test_sampling_options_reach_the_generator(package_dir):
    args = ["generate", str(package_dir), "-p", "Hi", "-n", "20", "--temperature", "0.7", "--top-p", "0.9",
            "--top-k", "50", "--presence-penalty", "0.2", "--frequency-penalty", "0.1", "--seed", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    expected = library_text(package_dir, "Hi", max_tokens=20, temperature=0.7, top_p=0.9, top_k=50,
                            presence_penalty=0.2, frequency_penalty=0.1, seed=5)
    assert result.stdout == expected + "\n"


def test_stop_strings_end_the_output_before_them(package_dir):
    full = library_text(package_dir, "Hello", max_tokens=40, temperature=0)
    stop_a, stop_b = full[8:10], "<never seen>"
    result = runner.invoke(app, ["generate", str(package_dir), "--prompt", "Hello", "--max-tokens", "40",
                                 "--greedy", "--stop", stop_b, "--stop", stop_a])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == full[: full.find(stop_a)] + "\n"


def test_threads_and_spin_wait_reach_onnx_runtime_and_change_no_token(package_dir, monkeypatch):
    from rwkv_deploy.runtime import onnx_backend

    asked = []
    real = onnx_backend.session_options
    monkeypatch.setattr(onnx_backend, "session_options", lambda *a: asked.append(a) or real(*a))
    result = runner.invoke(app, ["generate", str(package_dir), "-p", "Hello", "-n", "12", "--greedy", "--threads", "2",
                                 "--spin-wait"])
    assert result.exit_code == 0, result.stderr
    assert asked == [(2, True)]
    assert result.stdout == library_text(package_dir, "Hello", max_tokens=12, temperature=0) + "\n"


@pytest.mark.parametrize("args,message", [
    pytest.param(["--temperature", "-1"], "temperature must be a finite number >= 0", id="bad-temperature"),
    pytest.param(["--top-p", "0"], "top_p must be in", id="bad-top-p"),
    pytest.param(["--backend", "tensorrt", "--spin-wait"], "--spin-wait and --cpu-graph on apply to --backend "
                 "onnxruntime", id="spin-wait-on-tensorrt"),
    pytest.param(["--backend", "tensorrt", "--cpu-graph", "on"], "--spin-wait and --cpu-graph on apply to --backend "
                 "onnxruntime", id="cpu-graph-on-tensorrt"),
    pytest.param(["--cpu-graph", "always"], "--cpu-graph 'always': expected one of auto, on, off",
                 id="bad-cpu-graph"),
])
def test_bad_settings_give_one_line_and_exit_code_2(package_dir, args, message):
    result = runner.invoke(app, ["generate", str(package_dir), "--prompt", "x", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_directory_that_is_no_package_gives_one_line(tmp_path):
    result = runner.invoke(app, ["generate", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}/manifest.json: no manifest.json "
                                                  f"(is {tmp_path} an rwkv-deploy package?)"]


def test_generate_runs_from_an_archive_too(package_dir, tmp_path):
    archive = tmp_path / "model.zip"
    assert runner.invoke(app, ["package", str(package_dir), "-o", str(archive)]).exit_code == 0
    result = runner.invoke(app, ["generate", str(archive), "--prompt", "Hello", "--max-tokens", "12", "--greedy"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == library_text(package_dir, "Hello", max_tokens=12, temperature=0) + "\n"


def test_penalty_decay_reaches_the_generator(package_dir):
    args = ["generate", str(package_dir), "-p", "Hi", "-n", "20", "--greedy", "--frequency-penalty", "0.5",
            "--penalty-decay", "0.8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == library_text(package_dir, "Hi", max_tokens=20, temperature=0, frequency_penalty=0.5,
                                         penalty_decay=0.8) + "\n"


def test_save_state_then_load_state_continues_the_conversation(package_dir, tmp_path):
    first = runner.invoke(app, ["generate", str(package_dir), "-p", "One.", "-n", "8", "--greedy",
                                "--save-state", str(tmp_path / "s.npz")])
    assert first.exit_code == 0, first.stderr
    second = runner.invoke(app, ["generate", str(package_dir), "-p", " Two.", "-n", "8", "--greedy",
                                 "--load-state", str(tmp_path / "s.npz")])
    assert second.exit_code == 0, second.stderr
    package = DeploymentPackage.open(package_dir)
    generator = Generator(OnnxStepBackend(package), package.tokenizer)
    state = generator.generate("One.", 8, temperature=0).state
    assert second.stdout == generator.generate(" Two.", 8, temperature=0, state=state).text + "\n"
    missing = runner.invoke(app, ["generate", str(package_dir), "-p", "x", "--load-state", str(tmp_path / "no.npz")])
    assert missing.exit_code == 2 and "no.npz" in missing.stderr
