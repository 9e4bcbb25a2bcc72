"""Shared pieces of the server tests: the oracle (the runtime's own Generator on the same package, one thread,
as the server runs it) and the package the servers serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend


@pytest.fixture(scope="session")
def serve_pkg() -> Path:
    """A small RWKV-7 (2 layers, 32 wide, byte tokenizer) with its prefill graph: the committed golden package
    (read it; servers only read it)."""
    from tests.helpers.golden import golden_package

    return golden_package("v7-fp32")


def oracle(package_dir: Path, prefill_chunk: int | None = None) -> Generator:
    """The runtime's Generator on `package_dir` with one ONNX Runtime thread (the servers run with --threads 1)."""
    package = DeploymentPackage.open(package_dir)
    extra = {"prefill_chunk": prefill_chunk} if prefill_chunk else {}
    return Generator(OnnxStepBackend(package, threads=1), package.tokenizer, **extra)
