"""Optimization profiles: `--batch MIN:OPT:MAX` ranges become min/opt/max shapes for every graph input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rwkv_deploy.package.profiles import (BatchRange, InputShapes, OptimizationProfile, ProfileError,
                                                 make_profiles, parse_batch_ranges, select_profile)
from tests.helpers.small_packages import v7_manifest


def test_one_range_gives_every_input_its_shapes_at_min_opt_max():
    [profile] = make_profiles(v7_manifest(n_layer=1), [BatchRange.parse("1:4:16")])
    assert profile.batch == BatchRange(1, 4, 16)
    assert profile.inputs == (
        InputShapes("token", (1,), (4,), (16,)),
        InputShapes("state_in.layer0.att_shift", (1, 64), (4, 64), (16, 64)),
        InputShapes("state_in.layer0.wkv", (1, 4, 16, 16), (4, 4, 16, 16), (16, 4, 16, 16)),
        InputShapes("state_in.layer0.ffn_shift", (1, 64), (4, 64), (16, 64)),
    )


def test_each_batch_option_is_one_profile_in_the_given_order():
    profiles = make_profiles(v7_manifest(), parse_batch_ranges(["1:1:1", "2:8:32"]))
    assert [p.batch for p in profiles] == [BatchRange(1, 1, 1), BatchRange(2, 8, 32)]
    assert all(len(p.inputs) == 1 + 3 * 2 for p in profiles)  # token + 3 state tensors per layer
    assert profiles[1].inputs[2].max == (32, 4, 16, 16)


def test_no_batch_option_means_the_default_range():
    assert parse_batch_ranges(None) == [BatchRange(1, 1, 8)]


def test_profile_dict_round_trips():
    [profile] = make_profiles(v7_manifest(n_layer=1), [BatchRange(1, 2, 4)])
    data = profile.to_dict()
    assert data["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert data["inputs"]["state_in.layer0.wkv"] == {"min": [1, 4, 16, 16], "opt": [2, 4, 16, 16],
                                                     "max": [4, 4, 16, 16]}
    assert OptimizationProfile.from_dict(data) == profile


@pytest.mark.parametrize("text, message", [
    ("1:8", "expected MIN:OPT:MAX"),
    ("1:2:3:4", "expected MIN:OPT:MAX"),
    ("a:2:3", "whole numbers"),
    ("0:1:4", "MIN must be at least 1"),
    ("4:2:8", r"MIN <= OPT <= MAX"),
    ("1:9:8", r"MIN <= OPT <= MAX"),
    ("1:1:70000", "above 65536"),
])
def test_bad_ranges_are_refused_with_the_reason(text, message):
    with pytest.raises(ProfileError, match=message) as caught:
        BatchRange.parse(text)
    assert caught.value.exit_code == 2 and text in str(caught.value)


def test_the_same_range_twice_is_refused():
    with pytest.raises(ProfileError, match="1:2:4 is given twice"):
        parse_batch_ranges(["1:2:4", "1:2:4"])


def test_a_state_without_a_leading_batch_dim_cannot_be_profiled():
    manifest = v7_manifest(n_layer=1)
    broken = replace(manifest, state=[replace(manifest.state[0], shape=[64, "batch"])])
    with pytest.raises(ProfileError, match="layer0.att_shift"):
        make_profiles(broken, [BatchRange(1, 1, 1)])


def test_the_runtime_picks_the_profile_tuned_closest_to_the_batch():
    ranges = [BatchRange(1, 1, 8), BatchRange(4, 16, 32)]
    assert select_profile(ranges, 1) == 0
    assert select_profile(ranges, 5) == 0  # both accept 5; opt 1 is closer than opt 16
    assert select_profile(ranges, 12) == 1
    assert select_profile(ranges, 32) == 1
    with pytest.raises(ProfileError, match=r"batch 33 is outside .* \(1:1:8, 4:16:32\)"):
        select_profile(ranges, 33)
