"""What `build-engine` would pass to the TensorRT builder, recorded as plain data (no TensorRT needed)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.targets.tensorrt.build_config import (BuildConfigError, EngineBuildConfig, make_build_config,
                                                     make_build_configs)
from tests.helpers.small_packages import v7_manifest, write_manifest

runner = CliRunner()


@pytest.fixture
def package_dir(tmp_path):
    return write_manifest(tmp_path / "pkg", v7_manifest(n_layer=1))


def test_the_recorded_config_is_exactly_what_the_options_say(package_dir, tmp_path):
    config = make_build_config(package_dir, ["1:1:1", "2:4:8"], opt_level=5, workspace_mb=512,
                               timing_cache=tmp_path / "trt.cache", detailed_profile=True)

    def shapes(low, opt, high, *dims):
        return {"min": [low, *dims], "opt": [opt, *dims], "max": [high, *dims]}

    def profile(low, opt, high):
        return {"batch": {"min": low, "opt": opt, "max": high},
                "inputs": {"token": shapes(low, opt, high),
                           "state_in.layer0.att_shift": shapes(low, opt, high, 64),
                           "state_in.layer0.wkv": shapes(low, opt, high, 4, 16, 16),
                           "state_in.layer0.ffn_shift": shapes(low, opt, high, 64)}}

    assert config.to_dict() == {
        "graph": "step",
        "onnx": "model.onnx",
        "network_flags": ["STRONGLY_TYPED"],
        "builder_flags": {"TF32": False},
        "memory_pool_limits": {"WORKSPACE": 512 * 2**20},
        "builder_optimization_level": 5,
        "profiling_verbosity": "DETAILED",
        "timing_cache": str(tmp_path / "trt.cache"),
        "compute_capabilities": [],
        "profiles": [profile(1, 1, 1), profile(2, 4, 8)],
    }


def test_defaults_leave_tensorrt_its_own_choices_except_tf32(package_dir):
    data = make_build_config(package_dir).to_dict()
    assert data["memory_pool_limits"] == {"WORKSPACE": None}
    assert data["builder_optimization_level"] == 3
    assert data["profiling_verbosity"] == "LAYER_NAMES_ONLY"
    assert data["timing_cache"] is None
    assert data["builder_flags"] == {"TF32": False}  # an fp32 package builds a true fp32 engine
    assert [p["batch"] for p in data["profiles"]] == [{"min": 1, "opt": 1, "max": 8}]
    assert "FP16" not in str(data)  # precision is the graph's, never a builder flag


def test_config_round_trips_through_its_dict(package_dir):
    config = make_build_config(package_dir, ["1:2:4"], workspace_mb=64, tf32=True)
    assert EngineBuildConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("options, message", [
    ({"opt_level": 6}, r"--opt-level 6: .* 0\.\.5"),
    ({"opt_level": -1}, r"--opt-level -1"),
    ({"workspace_mb": 0}, "--workspace-mb 0: must be at least 1"),
])
def test_bad_options_are_refused(package_dir, options, message):
    with pytest.raises(BuildConfigError, match=message):
        make_build_config(package_dir, **options)


def test_a_timing_cache_inside_the_package_is_refused(package_dir):
    with pytest.raises(BuildConfigError, match="outside the package"):
        make_build_config(package_dir, timing_cache=package_dir / "cache" / "trt.cache")


def test_build_engine_command_reports_a_bad_range_in_one_line_before_looking_for_tensorrt(package_dir):
    result = runner.invoke(app, ["build-engine", str(package_dir), "--batch", "1:1:4", "--batch", "8:2:1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --batch 8:2:1: needs MIN <= OPT <= MAX"


def test_rtx_refuses_a_timing_cache_and_full_tensorrt_refuses_build_targets(package_dir, tmp_path):
    with pytest.raises(BuildConfigError, match="TensorRT for RTX has no timing cache"):
        make_build_configs(package_dir, "tensorrt_rtx", timing_cache=tmp_path / "t.cache")
    with pytest.raises(BuildConfigError, match="--compute-capability is for TensorRT for RTX"):
        make_build_configs(package_dir, "tensorrt", targets=("8.6",))
    [config] = make_build_configs(package_dir, "tensorrt_rtx", targets=("8.6", "12.0"))
    assert config.to_dict()["compute_capabilities"] == ["8.6", "12.0"]


def test_a_prefill_graph_gets_the_tokens_range_in_every_profile(tmp_path):
    from dataclasses import replace

    from rwkv_deploy.package.manifest import GraphInfo

    manifest = v7_manifest(n_layer=1)
    manifest = replace(manifest, graphs={**manifest.graphs, "prefill": GraphInfo("model.prefill.onnx", "fp32", 18)})
    package = write_manifest(tmp_path / "pkg", manifest)
    step, prefill = make_build_configs(package, "tensorrt_rtx", "all", ["1:1:1", "2:4:8"], "1:16:128")
    assert (step.name, prefill.name) == ("step", "prefill") and prefill.graph == "model.prefill.onnx"
    second = prefill.to_dict()["profiles"][1]
    assert second["tokens"] == {"min": 1, "opt": 16, "max": 128}
    assert second["inputs"]["tokens"] == {"min": [2, 1], "opt": [4, 16], "max": [8, 128]}
    assert second["inputs"]["state_in.layer0.wkv"]["max"] == [8, 4, 16, 16]
    assert "tokens" not in step.to_dict()["profiles"][0]
    with pytest.raises(Exception, match=r"--tokens 1:0:4: needs MIN <= OPT <= MAX"):
        make_build_configs(package, "tensorrt_rtx", "prefill", tokens="1:0:4")
