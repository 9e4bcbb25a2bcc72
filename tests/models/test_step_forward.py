"""`forward` over T tokens is exactly T calls of `step`, and batch rows never mix."""

from __future__ import annotations

import pytest
import torch

from rwkv_deploy.models import canonicalize, build_model
from tests.helpers.random_checkpoints import make_checkpoint

VERSIONS = ["4", "5.0", "5.1", "5.2", "6", "7"]


def small_model(version: str, seed: int = 0):
    kwargs = {} if version == "4" else {"head_size": 16}
    sd = make_checkpoint(version, n_layer=2, n_embd=64, vocab_size=113, seed=seed, **kwargs)
    return build_model(*canonicalize(sd))


@pytest.mark.parametrize("version", VERSIONS)
def test_forward_equals_repeated_step(version):
    model = small_model(version)
    tokens = torch.randint(0, 113, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        seq_logits, seq_state = model(tokens, model.init_state(2))
        state = model.init_state(2)
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(seq_logits[:, t], logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(seq_state, state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_forward_in_chunks_carries_state(version):
    model = small_model(version)
    tokens = torch.randint(0, 113, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = model(tokens, model.init_state(1))
        first, state = model(tokens[:, :7], model.init_state(1))
        second, _ = model(tokens[:, 7:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_rows_are_independent(version):
    model = small_model(version)
    tokens = torch.randint(0, 113, (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched, _ = model(tokens, model.init_state(3))
        for b in range(3):
            alone, _ = model(tokens[b : b + 1], model.init_state(1))
            torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_state_matters():
    """The same token after different histories gives different logits (the state is really used)."""
    model = small_model("7")
    with torch.no_grad():
        _, s1 = model(torch.tensor([[1, 2, 3]]), model.init_state(1))
        _, s2 = model(torch.tensor([[4, 5, 6]]), model.init_state(1))
        a, _ = model.step(torch.tensor([7]), s1)
        b, _ = model.step(torch.tensor([7]), s2)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_step_does_not_modify_the_input_state(version):
    model = small_model(version)
    state = model.init_state(2)
    before = [s.clone() for s in state]
    with torch.no_grad():
        model.step(torch.tensor([1, 2]), state)
    for a, b in zip(state, before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("version", VERSIONS)
def test_state_spec_describes_init_state(version):
    model = small_model(version)
    spec = model.state_spec()
    state = model.init_state(4)
    spec.check(state, batch=4)
    assert len(spec.names) == len(set(spec.names))
    for s, t in zip(spec, state):
        assert t.dtype == torch.float32
        assert torch.all(t == s.init)
