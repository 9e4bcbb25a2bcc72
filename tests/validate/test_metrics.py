"""The metric functions on hand-made arrays whose right answers can be worked out on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rwkv_deploy.validate import metrics


def test_max_abs_error_is_the_largest_elementwise_difference():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    art = np.array([[1.0, 2.5], [2.0, 4.0]], dtype=np.float32)
    assert metrics.max_abs_error(ref, art) == 1.0


def test_max_relative_error_divides_by_the_reference_above_the_floor_only():
    ref = np.array([100.0, 0.0])
    # 100 -> 101 is 1% relative; 0 -> 0.02 is judged against the floor (1.0): 2%, not infinite
    art = np.array([101.0, 0.02])
    assert metrics.max_relative_error(ref, art) == pytest.approx(0.02)
    assert metrics.max_relative_error(ref, art, floor=1e-9) == pytest.approx(0.02 / 1e-9)


def test_nan_or_inf_in_the_artifact_poisons_the_error_metrics():
    ref = np.zeros(3)
    assert math.isnan(metrics.max_abs_error(ref, np.array([0.0, np.nan, 0.0])))
    assert metrics.max_abs_error(ref, np.array([0.0, np.inf, 0.0])) == math.inf


def test_nanmax_keeps_a_nan_wherever_it_is_where_pythons_max_drops_it():
    assert max(0.0, math.nan) == 0.0  # why the validator does not use max() to accumulate errors
    assert math.isnan(metrics.nanmax([0.0, math.nan, 1.0]))
    assert metrics.nanmax([0.5, 2.0, math.inf]) == math.inf
    assert metrics.nanmax([]) == 0.0


def test_growth_slope_sign_follows_the_trend_of_the_error():
    steps = np.arange(64)
    assert metrics.growth_slope(1e-6 * 10.0 ** (steps / 16), floor=1e-12) == pytest.approx(1 / 16)
    assert metrics.growth_slope(1e-3 * 10.0 ** (-steps / 32), floor=1e-12) == pytest.approx(-1 / 32)
    assert metrics.growth_slope(np.full(64, 3e-6), floor=1e-12) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(metrics.growth_slope(np.array([1e-6, np.nan, 1e-6]), floor=1e-12))


def test_growth_floor_keeps_noise_far_below_tolerance_from_counting():
    errors = np.array([0.0] * 8 + [1e-9] * 8)  # zero, then tiny noise
    assert metrics.growth_slope(errors, floor=1e-8) == pytest.approx(0.0, abs=1e-12)
    assert metrics.quarter_growth(errors, floor=1e-8) == 1.0


def test_quarter_growth_compares_the_last_quarter_with_the_first():
    errors = np.array([1e-6, 2e-6, 1e-6, 1e-6, 5e-6, 5e-6, 1e-5, 2e-5])
    assert metrics.quarter_growth(errors, floor=1e-12) == pytest.approx(2e-5 / 2e-6)


def test_matching_prefix_length_counts_tokens_before_the_first_difference():
    a = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [9, 9, 9, 9]])
    b = np.array([[1, 2, 3, 4], [1, 2, 0, 4], [8, 9, 9, 9]])
    assert metrics.matching_prefix_length(a, b).tolist() == [4, 2, 0]


def test_divergence_margin_is_the_references_preference_where_greedy_decodes_part():
    # two sequences, 3 greedy steps, vocab 3; sequence 0 never parts, sequence 1 parts at step 1
    ref_logits = np.zeros((3, 2, 3))
    ref_logits[1, 1] = [0.0, 2.5, 2.0]  # the reference picked token 1 over token 2 by 0.5
    ref_tokens = np.array([[0, 0, 0], [0, 1, 1]])
    art_tokens = np.array([[0, 0, 0], [0, 2, 1]])
    assert metrics.divergence_margins(ref_logits, ref_tokens, art_tokens).tolist() == [0.0, 0.5]
