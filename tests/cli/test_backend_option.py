"""`--backend tensorrt` on `generate` and `validate`: the commands reach the TensorRT backend and use it.

The engine is real (built on the CPU with TensorRT for RTX); running it needs a GPU, so the backend runs it on
`tests.helpers.gpu_standin_tensorrt` (the runtime API executed with ONNX Runtime on host buffers). These
tests prove the wiring (option -> make_backend -> engine -> report), not TensorRT's numbers; the real run is
`scripts/gpu_check.sh` on a GPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend
from rwkv_deploy.runtime import tensorrt_backend
from tests.helpers.gpu_standin_tensorrt import build_rtx_engines, use_gpu_standin_backend
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path]:
    """A byte-tokenizer v7 package with a real RTX step engine (built without a GPU), and its checkpoint."""
    root = tmp_path_factory.mktemp("backend-option")
    checkpoint = root / "m.pth"
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=9), checkpoint)
    export_package(checkpoint, root / "pkg", ExportOptions(tokenizer="bytes"))
    pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13")
    build_rtx_engines(root / "pkg", ["1:1:1", "1:2:4"])
    return root / "pkg", checkpoint


@pytest.fixture
def counted_steps(monkeypatch, package) -> list[int]:
    """Run the TensorRT backend on the GPU stand-in, counting its steps (so a silent fallback to ORT would show)."""
    use_gpu_standin_backend(monkeypatch, package[0])
    calls: list[int] = []
    original = tensorrt_backend.TensorRTStepBackend.step

    def step(self, tokens, state):
        calls.append(len(tokens))
        return original(self, tokens, state)

    monkeypatch.setattr(tensorrt_backend.TensorRTStepBackend, "step", step)
    return calls


def test_generate_with_the_tensorrt_backend_gives_onnx_runtimes_text(package, counted_steps):
    package_dir, _ = package
    result = runner.invoke(app, ["generate", str(package_dir), "--prompt", "def f", "-n", "16", "--greedy",
                                 "--backend", "tensorrt"])
    assert result.exit_code == 0, result.output
    opened = DeploymentPackage.open(package_dir)
    expected = Generator(OnnxStepBackend(opened), opened.tokenizer).generate("def f", 16, temperature=0).text
    assert result.stdout == expected + "\n"
    assert len(counted_steps) >= 16


def test_generate_with_cuda_graphs_replays_and_gives_the_same_text(package, counted_steps):
    package_dir, _ = package
    args = ["generate", str(package_dir), "--prompt", "x = ", "-n", "8", "--greedy", "--backend", "tensorrt"]
    plain = runner.invoke(app, args)
    graphs = runner.invoke(app, args + ["--cuda-graphs"])
    assert plain.exit_code == 0 and graphs.exit_code == 0, graphs.output
    assert graphs.stdout == plain.stdout


def test_validate_with_the_tensorrt_backend_passes_and_says_what_ran(package, counted_steps, tmp_path):
    package_dir, checkpoint = package
    result = runner.invoke(app, ["validate", str(package_dir), "-c", str(checkpoint), "--steps", "12", "--batch", "2",
                                 "--greedy-tokens", "4", "--backend", "tensorrt", "-q", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["options"]["backend"] == "tensorrt"
    assert "tensorrt" in report["artifact"]["runtime"]
    assert len(counted_steps) >= 2 * 12  # both streams went through the engine


def test_an_unknown_backend_or_a_missing_engine_is_one_line(package, tmp_path):
    package_dir, checkpoint = package
    bad = runner.invoke(app, ["generate", str(package_dir), "-p", "a", "--backend", "tflite"])
    assert bad.exit_code == 2 and "unknown backend 'tflite'" in bad.output and "Traceback" not in bad.output
    no_engine = tmp_path / "no-engine"
    export_package(checkpoint, no_engine, ExportOptions(tokenizer="bytes"))
    missing = runner.invoke(app, ["validate", str(no_engine), "-c", str(checkpoint), "--backend", "tensorrt", "-q"])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_cuda_graphs_needs_the_tensorrt_backend(package):
    package_dir, _ = package
    result = runner.invoke(app, ["generate", str(package_dir), "-p", "a", "--cuda-graphs"])
    assert result.exit_code == 2 and "--cuda-graphs" in result.output and "tensorrt" in result.output
