"""`pip install rwkv-deploy` without extras is the runtime: it generates from, verifies and packages a package
with no PyTorch and no onnx installed, and the commands that need them say which extra to install.

The runtime-only environment is `.venv-runtime` (`make setup` creates it with `pip install -e .`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rwkv_deploy.runtime import DeploymentPackage, Generator
from rwkv_deploy.runtime.backends import make_backend

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_VENV = ROOT / ".venv-runtime"
PROMPT = "def main():"


@pytest.fixture(scope="module")
def runtime_bin() -> Path:
    if not (RUNTIME_VENV / ".installed").exists():
        pytest.fail(f"{RUNTIME_VENV} is missing: `make setup` creates the runtime-only install these tests use")
    return RUNTIME_VENV / "bin"


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def test_the_runtime_install_has_no_pytorch_and_no_onnx(runtime_bin: Path) -> None:
    code = ("import importlib.util as u, sys; import rwkv_deploy.runtime, rwkv_deploy.package.archive, "
            "rwkv_deploy.tokenization; print([m for m in ('torch', 'onnx', 'safetensors') if u.find_spec(m)])")
    done = _run(runtime_bin / "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_generate_verify_and_package_run_without_pytorch(runtime_bin: Path, shared_package, tmp_path: Path) -> None:
    package = shared_package("7", tokenizer="bytes", prefill=True)
    cli = runtime_bin / "rwkv-deploy"
    done = _run(cli, "generate", str(package), "--prompt", PROMPT, "--max-tokens", "24", "--greedy")
    assert done.returncode == 0, done.stderr
    # the same text as the full install's runtime
    opened = DeploymentPackage.open(package)
    expected = Generator(make_backend("onnxruntime", opened), opened.tokenizer).generate(PROMPT, 24, temperature=0.0)
    assert expected.stats.generated_tokens == 24
    assert done.stdout == expected.text + "\n"

    archive = tmp_path / "pkg.zip"
    assert _run(cli, "package", str(package), "-o", str(archive)).returncode == 0
    verified = _run(cli, "verify", str(archive))
    assert verified.returncode == 0 and verified.stdout.strip().endswith(f"OK: {archive}")
    assert "not checked" in verified.stderr  # says what it could not check without onnx


def test_the_runtime_install_runs_a_packages_cpu_graph(runtime_bin: Path, shared_package, tmp_path: Path) -> None:
    from rwkv_deploy.runtime import cpu_ops
    from rwkv_deploy.targets.cpu.graph_file import install_cpu_graph

    if cpu_ops.library_path() is None:
        pytest.skip("CPU operators not built in this install")
    package = tmp_path / "pkg"
    shutil.copytree(shared_package("7", "fp16", tokenizer="bytes", prefill=True), package)
    install_cpu_graph(package)  # written by the full install (onnx); run by the runtime one (no onnx, no torch)
    runs = {choice: _run(runtime_bin / "rwkv-deploy", "generate", str(package), "--prompt", PROMPT, "--max-tokens",
                         "16", "--greedy", "--cpu-graph", choice) for choice in ("on", "off")}
    assert runs["on"].returncode == 0, runs["on"].stderr
    assert "CPU graph]" in runs["on"].stderr and "CPU graph]" not in runs["off"].stderr
    assert runs["on"].stdout == runs["off"].stdout


@pytest.mark.parametrize("command", [["export", "--out", "{tmp}/out"], ["validate", "{tmp}", "-c", "x.pth"],
                                     ["inspect"]])
def test_commands_that_need_pytorch_say_which_extra_to_install(runtime_bin: Path, tmp_path: Path,
                                                               command: list[str]) -> None:
    before = sorted(tmp_path.iterdir())
    done = _run(runtime_bin / "rwkv-deploy", *[a.format(tmp=tmp_path) for a in command])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rwkv-deploy[export]"' in lines[0] and command[0] in lines[0]
    assert sorted(tmp_path.iterdir()) == before


def test_serve_without_the_serve_extra_says_which_extra_to_install(runtime_bin: Path, shared_package) -> None:
    done = _run(runtime_bin / "rwkv-deploy", "serve", str(shared_package("7", tokenizer="bytes", prefill=True)))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rwkv-deploy[serve]"' in lines[0]


TARGETS_VENV = ROOT / ".venv-targets"


@pytest.mark.parametrize("command", [["check-trt", "{pkg}"], ["build-engine", "{pkg}"], ["build-cpu", "{pkg}"],
                                     ["package", "{pkg}", "--triton", "{tmp}/repo"]])
def test_target_commands_without_onnx_say_to_install_the_targets_extra(runtime_bin: Path, shared_package,
                                                                       tmp_path: Path, command: list[str]) -> None:
    package = shared_package("7", tokenizer="bytes", prefill=True)
    done = _run(runtime_bin / "rwkv-deploy", *[a.format(pkg=package, tmp=tmp_path) for a in command])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rwkv-deploy[targets]"' in lines[0] and command[0] in lines[0]
    assert not (tmp_path / "repo").exists()


def test_the_targets_install_builds_deployment_targets_without_pytorch(shared_package, tmp_path: Path) -> None:
    """`pip install "rwkv-deploy[targets]"`: onnx and no PyTorch; check-trt and package --triton run, and the
    Triton repository is the one the full install writes."""
    if not (TARGETS_VENV / ".installed").exists():
        pytest.fail(f"{TARGETS_VENV} is missing: `make setup` creates the targets install this test uses")
    bin_dir = TARGETS_VENV / "bin"
    probe = _run(bin_dir / "python", "-c", "import importlib.util as u; print([m for m in ('torch', 'onnx') if u.find_spec(m)])")
    assert probe.stdout.strip() == "['onnx']", probe.stderr
    package = shared_package("7", tokenizer="bytes", prefill=True)
    lint = _run(bin_dir / "rwkv-deploy", "check-trt", str(package))
    assert lint.returncode == 0, lint.stderr
    written = _run(bin_dir / "rwkv-deploy", "package", str(package), "--triton", str(tmp_path / "repo"))
    assert written.returncode == 0, written.stderr

    from rwkv_deploy.targets.triton import write_repository

    expected = write_repository(package, tmp_path / "expected").root
    got = tmp_path / "repo"
    names = sorted(p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert all((expected / n).read_bytes() == (got / n).read_bytes() for n in names)
