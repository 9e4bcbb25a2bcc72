"""scripts/gpu_check.sh runs on a CPU-only machine (SKIP lines, exit 0); its checks' code runs on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_without_cuda_every_check_is_skipped_and_the_script_succeeds():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU even where there is one
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--steps", "4"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for check in ("reference CUDA vs CPU v4", "reference CUDA vs CPU v7", "fp16 on CUDA vs fp32 v5.2",
                  "onnxruntime-gpu v7", "tensorrt v7"):
        assert f"SKIP: no CUDA ({check})" in lines
    assert lines[-1] == "0 passed, 0 failed, 14 skipped"
    assert any(line.split()[:2] == ["check", "subject"] for line in lines)  # the summary table


def test_the_reference_checks_run_on_the_cpu_as_a_dry_run(gpu_check, tmp_path):
    results = list(gpu_check.reference_checks(["7"], steps=3, root=tmp_path, device="cpu"))
    assert [(r.check, r.subject, r.status) for r in results] == [
        ("reference CUDA vs CPU", "v7", "PASS"), ("fp16 on CUDA vs fp32", "v7", "PASS")]
    assert float(results[0].value) == 0.0  # the same device computes the same numbers
    assert 0.0 < float(results[1].value) < float(results[1].limit)  # fp16 differs, within the fp16 limit


def test_the_script_maps_the_package_where_rwkv_deploy_is_not_installed():
    script = textwrap.dedent(f"""
        import sys, importlib.util
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # as if not installed
        print(importlib.util.find_spec("rwkv_deploy") is None)
        spec = importlib.util.spec_from_file_location("gpu_check", {str(REPO / "scripts" / "gpu_check.py")!r})
        module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.make_importable()
        import rwkv_deploy.targets.tensorrt.lint as lint, rwkv_deploy.errors as errors
        print(lint.__file__); print(errors.__file__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", str(REPO / "targets" / "tensorrt" / "lint.py"),
                                     str(REPO / "core" / "errors.py")]


@pytest.fixture(scope="module")
def gpu_tensorrt():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_tensorrt

        yield gpu_tensorrt
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_the_library_check_names_the_gpus_rtx_cannot_target(gpu_tensorrt, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13")
    from rwkv_deploy.tensorrt_library import GpuInfo

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on the GPU machine: only the carried RTX wheels
    library, targets = list(gpu_tensorrt.library_checks(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))))
    assert (library.check, library.subject, library.status) == ("tensorrt library", "tensorrt_rtx", "PASS")
    assert (targets.status, targets.subject) == ("FAIL", "NVIDIA H100 80GB HBM3 9.0")
    assert targets.note == "RTX builds for 7.5, 8.0, 8.6, 8.9, 12.0, 12.1"
    [rtx_4090] = list(gpu_tensorrt.library_checks(GpuInfo("NVIDIA GeForce RTX 4090", (8, 9))))[1:]
    assert rtx_4090.status == "PASS"


def test_the_child_process_cli_runs_from_the_checkout(gpu_tensorrt):
    result = gpu_tensorrt.cli("build-engine", "/nonexistent-package", "--trt", "rtx", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and "nonexistent-package" in result.stderr, result.stderr
