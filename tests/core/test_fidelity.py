"""rwkv_deploy.fidelity on hand-made arrays whose right answers can be worked out on paper, and its one
NaN / Inf policy, which bench and validate both report through."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from rwkv_deploy import fidelity


def test_log_softmax_is_a_normalised_log_distribution_even_for_huge_logits():
    out = fidelity.log_softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]], dtype=np.float32))
    assert out.dtype == np.float64
    assert np.allclose(out, np.log([[0.5, 0.5], [0.25, 0.75]]))


def test_kl_of_identical_distributions_is_zero_and_of_different_ones_positive():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert np.array_equal(fidelity.kl_divergence(logits, logits), [0.0, 0.0])
    # adding a constant to every logit does not change the distribution
    assert fidelity.kl_divergence(logits, logits + 7.0) == pytest.approx([0.0, 0.0], abs=1e-12)
    shifted = logits.copy()
    shifted[0, 0] -= 1.0
    kl = fidelity.kl_divergence(logits, shifted)
    assert kl[0] > 0 and kl[1] == 0


def test_kl_matches_the_textbook_formula():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.5, 0.25])
    expected = float(np.sum(p * np.log(p / q)))
    assert fidelity.kl_divergence(np.log(p), np.log(q)) == pytest.approx(expected)


def test_top1_matches_counts_rows_with_the_same_argmax():
    ref = np.array([[0.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    art = np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.1, 0.9]])
    assert fidelity.top1_matches(ref, art).tolist() == [True, False, True]

def test_kl_rounding_below_zero_is_clamped_to_zero():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 50)) * 30
    assert (fidelity.kl_divergence(logits, logits * (1 + 1e-15)) >= 0).all()


def test_nan_or_inf_in_either_side_poisons_kl_quietly():
    ref = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    art = np.array([[1.0, np.nan, 3.0], [1.0, np.inf, 3.0], [1.0, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning either
        kl = fidelity.kl_divergence(ref, art)
        back = fidelity.kl_divergence(art, ref)
    assert not np.isfinite(kl[:2]).any() and kl[2] == 0.0
    assert not np.isfinite(back[:2]).any() and back[2] == 0.0


def test_kl_refuses_arrays_of_different_shapes():
    with pytest.raises(ValueError, match=r"shape \[2, 3\] against a reference of \[3, 3\]"):
        fidelity.kl_divergence(np.zeros((3, 3)), np.zeros((2, 3)))


def test_count_nonfinite_counts_nan_and_both_infinities():
    assert fidelity.count_nonfinite(np.array([1.0, np.nan, np.inf, -np.inf])) == 3
    assert fidelity.count_nonfinite(np.zeros(4, dtype=np.float16)) == 0
