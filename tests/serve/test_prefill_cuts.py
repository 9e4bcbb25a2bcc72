"""What the prefix cache relies on: a prompt's prefill split at a multiple of the cut granule computes, bit for
bit, what the unsplit prefill computes (so a request continuing from a cached state equals an uncached run).
Per version and precision, on the small exports other tests share."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.models.reference.v7 import WKV_CHUNK
from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend
from rwkv_deploy.runtime.generation import feed_chunk
from rwkv_deploy.serve.prefix_cache import CUT_GRANULE
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

PACKAGES = [("4", "fp32"), ("5.2", "fp32"), ("6", "fp32"), ("7", "fp32"), ("7", "fp16"), ("7", "int8")]


def prefill(backend: OnnxStepBackend, tokens: np.ndarray, ends: list[int]) -> list[np.ndarray]:
    """The logits and state after feeding `tokens` in calls that end at `ends`."""
    state, start = backend.fresh_state(1), 0
    for end in ends:
        logits, state = feed_chunk(backend, tokens[None, start:end], state)
        start = end
    return [logits] + [np.asarray(v) for v in state.values]


def test_the_granule_is_a_whole_number_of_the_prefill_graphs_recurrence_blocks():
    assert CUT_GRANULE % WKV_CHUNK == 0


@pytest.mark.parametrize(("version", "precision"), PACKAGES)
def test_a_prefill_cut_at_a_multiple_of_the_granule_changes_no_bit(shared_package, version, precision):
    package = DeploymentPackage.open(shared(shared_package, version, precision))
    backend = OnnxStepBackend(package, threads=1)
    tokens = np.random.default_rng(7).integers(0, backend.vocab_size, 100).astype(np.int64)
    g = CUT_GRANULE
    # chunks of 64, as `generate --prefill-chunk 64` feeds them, against the same with cuts at multiples of g
    # (down to a last call of two tokens: one token takes the step graph, which the cache never makes happen)
    for uncut, cut in (([64, 100], [g, 64, 100]), ([64, 100], [64, 6 * g, 100]), ([64, 98], [3 * g, 64, 6 * g, 98]),
                       ([64, 100], [2 * g, 64, 5 * g, 100])):
        for a, b in zip(prefill(backend, tokens, cut), prefill(backend, tokens, uncut)):
            assert np.array_equal(a, b), (cut, float(np.abs(a - b).max()))
