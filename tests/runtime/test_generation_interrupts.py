"""A termination signal whose exception something swallowed still ends generation at the next token, not after
max_tokens (the CLI remembers the signal: rwkv_deploy.interrupts). Fast: the committed golden package."""

from __future__ import annotations

import os
import signal

import pytest

from rwkv_deploy import interrupts
from rwkv_deploy.runtime import DeploymentPackage, Generator
from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
from tests.helpers.golden import golden_package


def test_a_swallowed_sigterm_stops_a_long_generation_at_the_next_token() -> None:
    package = DeploymentPackage.open(golden_package("v7-fp32"))
    generator = Generator(OnnxStepBackend(package, threads=1), package.tokenizer)
    pieces: list[str] = []

    def careless_callback(piece: str) -> None:  # a callback (or library) that swallows everything
        pieces.append(piece)
        if len(pieces) == 3:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs here, between bytecodes, and its exception is dropped
                    pass
            except BaseException:  # noqa: BLE001
                pass

    installed = interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted):
            generator.generate([72, 101], 10_000, temperature=0, on_token=careless_callback)
    finally:
        interrupts.restore(installed)
    assert 3 <= len(pieces) <= 4
