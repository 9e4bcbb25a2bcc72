"""`rwkv-deploy build-cpu`: the CPU step graph written into an fp16 package, listed and hashed like every other
file, checked by `verify`, carried by archives, and run by `generate` and `serve` on the CPU (`--cpu-graph`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from rwkv_deploy.runtime import cpu_ops
from tests.helpers.small_packages import shared

pytest.importorskip("onnx")
pytestmark = pytest.mark.slow  # exports an fp16 package
needs_library = pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")

TOKENS = np.array([72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 10] * 2, dtype=np.int64)


def _cli(*args: str):
    from rwkv_deploy.cli.main import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def with_cpu_graph(shared_package, tmp_path_factory):
    """A copy of the shared RWKV-7 fp16 package with its CPU graph (read it; copy it to change it)."""
    package = tmp_path_factory.mktemp("cpu") / "pkg"
    shutil.copytree(shared(shared_package, "7", "fp16"), package)
    result = _cli("build-cpu", str(package))
    assert result.exit_code == 0, result.output
    assert ("weight products, 2 RWKV-7 time-mix cores and 4 token shifts on rwkv-deploy's CPU operators"  # 2 layers
            in result.output)
    return package


def _copy(package, tmp_path):
    shutil.copytree(package, tmp_path / "pkg")
    return tmp_path / "pkg"


def test_the_cpu_graph_is_listed_hashed_and_verified(with_cpu_graph):
    from rwkv_deploy.package.manifest import sha256_file
    from rwkv_deploy.package.verify import verify_package

    manifest = json.loads((with_cpu_graph / "manifest.json").read_text())
    entry = manifest["cpu_graphs"]["step"]
    assert entry["path"] == "cpu/step.onnx" and entry["external_data"] == "step.onnx.data"
    assert entry["source"] == manifest["graphs"]["step"]["path"]
    assert entry["source_sha256"] == manifest["files"][entry["source"]]
    for name in ("cpu/step.onnx", "cpu/step.onnx.data"):
        assert manifest["files"][name] == sha256_file(with_cpu_graph / name)
    assert verify_package(with_cpu_graph) == []


def test_the_prefill_graph_gets_a_cpu_graph_sharing_the_step_graphs_weights(with_cpu_graph):
    """One copy of each weight on disk (and, mapped by both sessions, in memory): the CPU prefill graph's products
    read the same packed tensors as the step graph's."""
    import onnx

    from rwkv_deploy.package.manifest import sha256_file

    manifest = json.loads((with_cpu_graph / "manifest.json").read_text())
    entry = manifest["cpu_graphs"]["prefill"]
    assert entry["path"] == "cpu/prefill.onnx" and entry["external_data"] == "step.onnx.data"
    assert entry["source"] == manifest["graphs"]["prefill"]["path"]
    assert manifest["files"]["cpu/prefill.onnx"] == sha256_file(with_cpu_graph / "cpu/prefill.onnx")
    referenced = 0
    for name in ("step", "prefill"):
        graph = onnx.load(str(with_cpu_graph / "cpu" / f"{name}.onnx"), load_external_data=False).graph
        ops = {n.op_type for n in graph.node}
        assert "Fp16MatMul" in ops
        referenced += sum(int(e.value) for t in graph.initializer for e in t.external_data if e.key == "length")
    assert (with_cpu_graph / "cpu/step.onnx.data").stat().st_size < 0.6 * referenced
    assert sorted(p.name for p in (with_cpu_graph / "cpu").iterdir()) == ["prefill.onnx", "step.onnx",
                                                                          "step.onnx.data"]


@needs_library
def test_prompts_take_the_cpu_prefill_graph_with_the_portable_logits(with_cpu_graph):
    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend

    package = DeploymentPackage.open(with_cpu_graph)
    portable, ours = OnnxStepBackend(package, threads=2), OnnxStepBackend(package, threads=2, cpu_graph="on")
    prompt = TOKENS[None, :20]
    want, want_state = portable.prefill(prompt, package.fresh_state(1))
    got, got_state = ours.prefill(prompt, package.fresh_state(1))
    assert ours._cpu_prefill == ("cpu/prefill.onnx", "step.onnx.data") and portable._cpu_prefill is None
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()  # fp16 rounding of the products
    for a, b in zip(want_state.values, got_state.values):
        assert np.abs(a - b).max() <= 2e-3 * max(np.abs(a).max(), 1.0)


@pytest.mark.parametrize("name", ["cpu/step.onnx.data", "cpu/prefill.onnx"])
def test_a_changed_cpu_graph_is_refused_before_it_runs(with_cpu_graph, tmp_path, name):
    from rwkv_deploy.package.verify import verify_package
    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.package import PackageError

    package = _copy(with_cpu_graph, tmp_path)
    data = package / name
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    assert any(name in p and "sha256" in p for p in verify_package(package))
    with pytest.raises(PackageError, match=re.escape(name)):
        DeploymentPackage.open(package)


def test_a_cpu_graph_made_from_another_step_graph_is_refused(with_cpu_graph, tmp_path):
    from rwkv_deploy.package.manifest import ManifestError
    from rwkv_deploy.package.manifest_file import read_manifest

    package = _copy(with_cpu_graph, tmp_path)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["cpu_graphs"]["step"]["source_sha256"] = "0" * 64
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"cpu_graphs\.step\.source_sha256.*build-cpu"):
        read_manifest(package)


@pytest.mark.parametrize("damage", ["flipped byte", "made from another step graph"])
def test_build_cpu_replaces_a_damaged_cpu_graph(with_cpu_graph, tmp_path, damage):
    from rwkv_deploy.package.verify import verify_package

    package = _copy(with_cpu_graph, tmp_path)
    if damage == "flipped byte":
        data = package / "cpu" / "step.onnx.data"
        raw = bytearray(data.read_bytes())
        raw[100] ^= 1
        data.write_bytes(bytes(raw))
    else:
        manifest = json.loads((package / "manifest.json").read_text())
        manifest["cpu_graphs"]["step"]["source_sha256"] = "0" * 64
        (package / "manifest.json").write_text(json.dumps(manifest))
    assert verify_package(package) != []
    result = _cli("build-cpu", str(package))
    assert result.exit_code == 0, result.output
    assert verify_package(package) == []


@pytest.mark.parametrize("entry_path", ["cpu/step.onnx", "step.onnx"])
def test_build_cpu_still_refuses_a_damaged_package(with_cpu_graph, tmp_path, entry_path):
    """Only the CPU graph's own files under cpu/ are left to be replaced: an entry that names the package's step
    graph cannot hide that graph's damage."""
    package = _copy(with_cpu_graph, tmp_path)
    manifest = json.loads((package / "manifest.json").read_text())
    step = manifest["graphs"]["step"]["path"]
    manifest["cpu_graphs"]["step"]["path"] = step if entry_path == "step.onnx" else entry_path
    (package / "manifest.json").write_text(json.dumps(manifest))
    data = package / (step + ".data")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    before = (package / "manifest.json").read_bytes()
    result = _cli("build-cpu", str(package))
    assert result.exit_code == 2
    assert "fails verification" in result.output and step in result.output
    assert (package / "manifest.json").read_bytes() == before


def test_build_cpu_never_writes_through_a_linked_folder(shared_package, tmp_path):
    package = _copy(shared(shared_package, "7", "fp16"), tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (package / "cpu").symlink_to(elsewhere)
    result = _cli("build-cpu", str(package))
    assert result.exit_code == 2
    assert "cpu" in result.output and "link" in result.output
    assert list(elsewhere.iterdir()) == []


@needs_library
def test_the_runtime_steps_with_the_cpu_graph_when_asked(with_cpu_graph):
    from rwkv_deploy.runtime import DeploymentPackage, stream_logits
    from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend

    package = DeploymentPackage.open(with_cpu_graph)
    portable = OnnxStepBackend(package, threads=1)
    ours = OnnxStepBackend(package, threads=1, cpu_graph="auto")
    assert not portable.runs_cpu_graph and ours.runs_cpu_graph
    assert ours.graph_path == with_cpu_graph / "cpu" / "step.onnx"
    expected, got = stream_logits(portable, TOKENS), stream_logits(ours, TOKENS)
    assert np.abs(got - expected).max() <= 2e-3 * np.abs(expected).max()  # fp16 rounding of the products
    assert (got.argmax(-1) == expected.argmax(-1)).all()


@needs_library
@pytest.mark.parametrize("choice, runs", [("auto", True), ("on", True), ("off", False)])
def test_generate_takes_the_cpu_graph_as_told_with_the_same_tokens(with_cpu_graph, choice, runs):
    command = [sys.executable, "-m", "rwkv_deploy.cli.main", "generate", str(with_cpu_graph), "-p", "Hello",
               "-n", "24", "--greedy", "--threads", "1"]
    done = subprocess.run(command + ["--cpu-graph", choice], capture_output=True, text=True, timeout=300)
    portable = subprocess.run(command + ["--cpu-graph", "off"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("CPU graph]" in done.stderr) == runs
    assert done.stdout == portable.stdout


def test_cpu_graph_on_names_why_it_cannot_run(shared_package):
    done = subprocess.run([sys.executable, "-m", "rwkv_deploy.cli.main", "generate",
                           str(shared(shared_package, "7", "fp16")), "-p", "x", "-n", "1", "--cpu-graph", "on"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--cpu-graph on, but the package has no CPU graph (add one with `rwkv-deploy build-cpu DIR`)" in done.stderr


@needs_library
def test_an_archive_carries_the_cpu_graph_to_generate(with_cpu_graph, tmp_path):
    archive = tmp_path / "model.zip"
    assert _cli("package", str(with_cpu_graph), "-o", str(archive)).exit_code == 0
    done = subprocess.run([sys.executable, "-m", "rwkv_deploy.cli.main", "generate", str(archive), "-p", "Hello",
                           "-n", "8", "--greedy", "--cpu-graph", "on"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU graph]" in done.stderr


@needs_library
def test_serve_runs_the_cpu_graph_with_spinning_threads_when_asked(with_cpu_graph, tmp_path_factory):
    pytest.importorskip("uvicorn")
    import urllib.request

    from tests.helpers.serve_process import serving

    with serving(tmp_path_factory, [f"tiny={with_cpu_graph}"], "--threads", "2", "--spin-wait") as server:
        assert "tiny (world chat template, CPU graph, spinning threads)" in server.log_tail()
        body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(f"{server.url}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            completion = json.loads(answer.read())
    assert completion["usage"]["completion_tokens"] == 8


@needs_library
def test_an_int8_package_gets_a_cpu_graph_that_generate_runs_to_the_same_tokens(shared_package, tmp_path):
    package = _copy(shared(shared_package, "7", "int8"), tmp_path)
    result = _cli("build-cpu", str(package))
    assert result.exit_code == 0, result.output
    assert ("weight products, 2 RWKV-7 time-mix cores and 4 token shifts on rwkv-deploy's CPU operators"
            in result.output)
    command = [sys.executable, "-m", "rwkv_deploy.cli.main", "generate", str(package), "-p", "Hello", "-n", "24",
               "--greedy", "--threads", "2"]
    ours = subprocess.run(command + ["--cpu-graph", "on"], capture_output=True, text=True, timeout=300)
    portable = subprocess.run(command + ["--cpu-graph", "off"], capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert "CPU graph]" in ours.stderr
    assert ours.stdout == portable.stdout


@needs_library
def test_a_library_left_from_older_sources_is_not_taken_for_a_newer_graph(with_cpu_graph, monkeypatch):
    """A compile error in `pip install` leaves the previous library in place (the extension is optional); a CPU
    graph that needs operators it lacks runs the portable graph under auto and is refused, with why, under on."""
    from rwkv_deploy.runtime import DeploymentPackage, cpu_ops
    from rwkv_deploy.runtime.cpu_graph import CpuGraphUnavailable, chosen_cpu_graph

    package = DeploymentPackage.open(with_cpu_graph)
    assert chosen_cpu_graph(package, "auto", "CPUExecutionProvider") is not None
    monkeypatch.setattr(cpu_ops, "library_version", lambda: 2)  # from before Rwkv7WkvStep
    assert chosen_cpu_graph(package, "auto", "CPUExecutionProvider") is None
    with pytest.raises(CpuGraphUnavailable, match="needs operators ai.rwkv_deploy.cpu version 3; this install "
                                                  "provides ai.rwkv_deploy.cpu version 2"):
        chosen_cpu_graph(package, "on", "CPUExecutionProvider")
