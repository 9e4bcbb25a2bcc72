"""Shared pieces of the server tests: the oracle (the runtime's own Generator on the same package, one thread,
as the server runs it) and the package the servers serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend


@pytest.fixture(scope="session")
def serve_pkg(shared_package) -> Path:
    """A small RWKV-7 (2 layers, 64 wide, byte tokenizer) with its prefill graph, exported once per session."""
    from tests.helpers.small_packages import shared

    return shared(shared_package, "7")


def oracle(package_dir: Path, prefill_chunk: int | None = None) -> Generator:
    """The runtime's Generator on `package_dir` with one ONNX Runtime thread (the servers run with --threads 1)."""
    package = DeploymentPackage.open(package_dir)
    extra = {"prefill_chunk": prefill_chunk} if prefill_chunk else {}
    return Generator(OnnxStepBackend(package, threads=1), package.tokenizer, **extra)
