"""can_prefill: the one question generation, the server and the validator ask before feeding a block of
tokens in one call. A backend counts only when it says it has a prefill graph and offers `prefill`."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime import RecurrentState, can_prefill
from rwkv_deploy.runtime.generation import feed_chunk


class StepOnly:
    vocab_size = 4

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return RecurrentState((), ())

    def step(self, tokens, state):
        return np.zeros((len(tokens), 4), np.float32), state


class PrefillGraph(StepOnly):
    def __init__(self, has_prefill: bool) -> None:
        self.has_prefill = has_prefill
        self.calls = 0

    def prefill(self, tokens, state):
        self.calls += 1
        return np.ones((tokens.shape[0], 4), np.float32), state


def test_only_a_backend_with_a_prefill_graph_can_prefill():
    assert not can_prefill(StepOnly())
    assert not can_prefill(PrefillGraph(has_prefill=False))  # the method, but a package without the graph
    assert can_prefill(PrefillGraph(has_prefill=True))


def test_feed_chunk_uses_prefill_for_blocks_and_refuses_a_block_without_it():
    backend = PrefillGraph(has_prefill=True)
    logits, _ = feed_chunk(backend, np.zeros((1, 3), np.int64), None)
    assert backend.calls == 1 and logits.tolist() == [[1.0] * 4]
    logits, _ = feed_chunk(backend, np.zeros((1, 1), np.int64), None)  # one token: a step
    assert backend.calls == 1 and logits.tolist() == [[0.0] * 4]
    with pytest.raises(TypeError, match="StepOnly has no prefill graph"):
        feed_chunk(StepOnly(), np.zeros((1, 3), np.int64), None)
