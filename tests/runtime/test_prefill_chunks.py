"""Prompts go through the prefill graph in bounded chunks, the state carried, with the logits of one call."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime import DeploymentPackage, GenerationError, Generator, OnnxStepBackend

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


class CountingBackend:
    """The real backend, recording the length of every prefill call."""

    def __init__(self, backend: OnnxStepBackend) -> None:
        self.backend, self.calls = backend, []
        self.vocab_size, self.has_prefill = backend.vocab_size, backend.has_prefill

    def fresh_state(self, batch: int = 1):
        return self.backend.fresh_state(batch)

    def step(self, tokens, state):
        return self.backend.step(tokens, state)

    def prefill(self, tokens, state):
        self.calls.append(tokens.shape[1])
        return self.backend.prefill(tokens, state)


@pytest.fixture(scope="module")
def backend(shared_package) -> OnnxStepBackend:
    package = DeploymentPackage.open(shared_package("7", "fp32", tokenizer="bytes", prefill=True))
    return OnnxStepBackend(package, providers=["CPUExecutionProvider"], threads=1)


def test_a_long_prompt_is_fed_in_bounded_chunks_with_the_logits_of_one_call(backend):
    prompt = np.random.default_rng(0).integers(0, 256, 1300).tolist()
    counting = CountingBackend(backend)
    chunked_logits, chunked_state = Generator(counting, prefill_chunk=512).prefill(prompt)
    assert counting.calls == [512, 512, 276]
    whole_logits, whole_state = Generator(backend, prefill_chunk=10**6).prefill(prompt)
    np.testing.assert_allclose(chunked_logits, whole_logits, atol=1e-5, rtol=0)
    for a, b in zip(chunked_state.numpy().values, whole_state.numpy().values):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_a_chunk_of_one_token_goes_through_the_step_graph(backend):
    counting = CountingBackend(backend)
    logits, _ = Generator(counting, prefill_chunk=4).prefill(list(range(9)))  # 4 + 4 + 1
    assert counting.calls == [4, 4]
    step_logits, state = None, backend.fresh_state(1)
    for token in range(9):
        step_logits, state = backend.step(np.array([token]), state)
    np.testing.assert_allclose(logits, step_logits[0], atol=1e-5, rtol=0)


def test_a_bad_chunk_size_or_seed_is_refused(backend):
    with pytest.raises(GenerationError, match="prefill_chunk must be at least 1"):
        Generator(backend, prefill_chunk=0)
    with pytest.raises(GenerationError, match="seed must be a whole number"):
        Generator(backend).generate([1, 2], 2, seed=-1)
