"""Sampling: what each knob keeps or changes, seeded reproducibility, greedy == argmax."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime.sampling import (
    NonFiniteError,
    SamplingError,
    SamplingParams,
    apply_penalties,
    sample_token,
    softmax,
    top_k_mask,
    top_p_mask,
)

LOGITS = np.array([1.0, 4.0, 2.0, 3.0, 0.0], dtype=np.float32)  # ranking: 1 > 3 > 2 > 0 > 4


def test_top_k_keeps_the_k_highest_logits():
    assert top_k_mask(LOGITS, 2).tolist() == [False, True, False, True, False]
    assert top_k_mask(LOGITS, 0).all() and top_k_mask(LOGITS, 99).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.1, 0.5, 0.15, 0.25, 0.0])
    assert top_p_mask(probs, 0.5).tolist() == [False, True, False, False, False]  # 0.5 alone reaches 0.5
    assert top_p_mask(probs, 0.6).tolist() == [False, True, False, True, False]  # 0.5 + 0.25
    assert top_p_mask(probs, 0.01).sum() == 1  # always at least the most likely token
    assert top_p_mask(probs, 1.0).tolist() == [True, True, True, True, False]  # only impossible tokens go


def test_penalties_lower_generated_tokens_once_plus_per_occurrence():
    counts = np.array([0, 3, 1, 0, 0])
    out = apply_penalties(LOGITS, counts, presence=0.5, frequency=0.25)
    np.testing.assert_allclose(out, [1.0, 4.0 - 0.5 - 0.75, 2.0 - 0.5 - 0.25, 3.0, 0.0])


def test_greedy_is_argmax_and_ignores_the_generator():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=50).astype(np.float32)
        assert sample_token(logits, SamplingParams(temperature=0), rng) == int(np.argmax(logits))


def test_greedy_sees_the_penalties():
    counts = np.array([0, 5, 0, 0, 0])
    params = SamplingParams(temperature=0, presence_penalty=2.0)
    assert sample_token(LOGITS, params, np.random.default_rng(0), counts) == 3  # token 1 pushed below token 3


def test_same_seed_same_tokens_other_seed_other_tokens():
    params = SamplingParams(temperature=1.0)
    logits = np.zeros(1000, dtype=np.float32)

    def draw(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample_token(logits, params, rng) for _ in range(30)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_samples_only_from_tokens_that_survive_top_k_and_top_p():
    rng = np.random.default_rng(1)
    drawn = {sample_token(LOGITS, SamplingParams(top_k=2), rng) for _ in range(300)}
    assert drawn == {1, 3}
    probs = softmax(LOGITS)  # ~[0.03, 0.64, 0.09, 0.23, 0.01]: 0.64 + 0.23 reaches 0.8
    drawn = {sample_token(LOGITS, SamplingParams(top_p=0.8), rng) for _ in range(300)}
    assert drawn == {1, 3}, probs


def test_sampling_follows_the_tempered_distribution():
    rng = np.random.default_rng(2)
    logits = np.log(np.array([0.2, 0.8], dtype=np.float32))
    hot = np.mean([sample_token(logits, SamplingParams(temperature=1.0), rng) for _ in range(4000)])
    cold = np.mean([sample_token(logits, SamplingParams(temperature=0.25), rng) for _ in range(4000)])
    assert abs(hot - 0.8) < 0.03
    assert abs(cold - 0.8**4 / (0.8**4 + 0.2**4)) < 0.02  # p ** (1/T), renormalized


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(SamplingError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.mark.parametrize("bad", [{"temperature": float("inf")}, {"temperature": float("nan")},
                                 {"presence_penalty": float("nan")}, {"frequency_penalty": float("inf")},
                                 {"presence_penalty": 101.0}, {"top_p": float("nan")}, {"top_k": 1.5}])
def test_non_finite_or_out_of_range_settings_are_refused(bad):
    with pytest.raises(SamplingError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_an_error_never_a_token(value):
    logits = np.array([0.1, value, 0.3], dtype=np.float32)
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=0.9)):
        with pytest.raises(NonFiniteError, match="1 of 3 logits are NaN or infinite"):
            sample_token(logits, params, np.random.default_rng(0))


def test_a_tiny_temperature_is_greedy_not_an_overflow():
    logits = np.array([1.0, 3.0, 2.9, -5.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {sample_token(logits, SamplingParams(temperature=1e-40), rng) for _ in range(50)} == {1}


def test_huge_penalties_still_give_a_token_of_the_vocabulary():
    logits = np.zeros(5, dtype=np.float32)
    counts = np.array([1000, 1000, 1000, 1000, 0])
    params = SamplingParams(temperature=0.5, presence_penalty=100, frequency_penalty=100)
    tokens = {sample_token(logits, params, np.random.default_rng(seed), counts) for seed in range(20)}
    assert tokens == {4}


def test_penalty_counts_decay_each_step_like_rwkvs_alpha_decay():
    from rwkv_deploy.runtime.sampling import count_token

    params = SamplingParams(presence_penalty=0.5, frequency_penalty=1.0, penalty_decay=0.5)
    counts = params.new_counts(4)
    for token in (1, 1, 2):
        count_token(counts, token, params.penalty_decay)
    np.testing.assert_allclose(counts, [0.0, 0.5 * 0.5 + 0.5, 1.0, 0.0])  # 1, decayed, +1, decayed: 0.75
    assert SamplingParams(presence_penalty=0.5).new_counts(4).dtype == np.int64  # no decay: whole counts, as before
    assert SamplingParams().new_counts(4) is None
    logits = np.array([0.0, 1.0, 1.2, 0.9])
    assert sample_token(logits, SamplingParams(temperature=0, frequency_penalty=1.0, penalty_decay=0.5),
                        np.random.default_rng(0), counts) == 3  # 1 and 2 pushed below 3


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan")])
def test_penalty_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(SamplingError, match="penalty_decay"):
        SamplingParams(penalty_decay=decay)
