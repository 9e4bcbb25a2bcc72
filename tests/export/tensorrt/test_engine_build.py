"""`build-engine`: what is missing is said in one line with nothing written; the calls made to TensorRT
follow the 10.x/11.x API (checked against a recording stand-in); engine.json and manifest.json are
written so that the package still verifies; a plan built elsewhere is refused with a clear reason.

The real build needs TensorRT and a GPU; its test skips here (see docs/tensorrt.md for where it ran).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.manifest import read_manifest, sha256_file
from rwkv_deploy import tensorrt_library as environment
from rwkv_deploy.export.tensorrt.build_config import make_build_config
from rwkv_deploy.export.tensorrt.builder import EngineBuildError, build_engine
from rwkv_deploy.export.tensorrt.engine_files import engine_record, install_engine
from rwkv_deploy.package.engines import EngineError, check_compatibility, read_engine_record
from rwkv_deploy.tensorrt_library import GpuInfo, TensorRTUnavailable
from rwkv_deploy.package.verify import verify_package
from rwkv_deploy.runtime.package import DeploymentPackage
from tests.helpers.fake_tensorrt import FakeTensorRT, ParserError
from tests.helpers.small_packages import export_small

runner = CliRunner()
H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
FAKE_BUILD = {"tensorrt_version": "10.13.3.9", "gpu": H100.to_dict(), "build_seconds": 41.5,
              "io": [{"name": "token", "mode": "INPUT", "dtype": "INT64", "shape": [-1]}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return export_small(tmp_path_factory.mktemp("engine"), "7")


@pytest.fixture
def package_dir(exported, tmp_path) -> Path:
    """A fresh copy of the export for each test (tests write into packages)."""
    return Path(shutil.copytree(exported, tmp_path / "pkg"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def use_fake_tensorrt(monkeypatch, fake: FakeTensorRT | None, gpu: GpuInfo | None = H100) -> None:
    monkeypatch.setattr(environment, "load_tensorrt", lambda: (fake, None) if fake else (None, "TensorRT is not installed"))
    monkeypatch.setattr(environment, "find_gpu", lambda: gpu)


# -- nothing to build with -------------------------------------------------------------------------


def test_without_tensorrt_build_engine_exits_2_in_one_line_and_writes_nothing(package_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError, whatever is installed
    before = snapshot(package_dir)
    result = runner.invoke(app, ["build-engine", str(package_dir), "--batch", "1:2:4"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot build a TensorRT engine: TensorRT is not installed")
    assert 'pip install "rwkv-deploy[tensorrt]"' in line and "NVIDIA" in line
    assert snapshot(package_dir) == before


def test_a_stub_tensorrt_package_and_a_missing_gpu_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))  # imports, but has no Builder
    monkeypatch.setattr(environment, "find_gpu", lambda: None)
    with pytest.raises(TensorRTUnavailable, match="a stub without TensorRT's libraries and no CUDA GPU is visible"):
        environment.require_tensorrt_and_gpu("build")


def test_tensorrt_without_a_gpu_exits_2(package_dir, monkeypatch):
    use_fake_tensorrt(monkeypatch, FakeTensorRT(), gpu=None)
    before = snapshot(package_dir)
    result = runner.invoke(app, ["build-engine", str(package_dir)])
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.stderr
    assert snapshot(package_dir) == before


# -- the calls made to TensorRT ------------------------------------------------------------------------


def test_build_makes_the_documented_calls_and_installs_a_verifiable_engine(package_dir, tmp_path, monkeypatch):
    fake = FakeTensorRT(version="11.4.0.106")
    use_fake_tensorrt(monkeypatch, fake)
    (tmp_path / "trt.cache").write_bytes(b"old")
    config = make_build_config(package_dir, ["1:1:1", "2:4:8"], opt_level=4, workspace_mb=256,
                               timing_cache=tmp_path / "trt.cache", detailed_profile=True)

    built = build_engine(package_dir, config)

    calls = fake.calls
    assert ("create_network", (1,)) in calls  # 1 << int(STRONGLY_TYPED), STRONGLY_TYPED being 0 in TensorRT 11
    assert ("parse_from_file", (str(package_dir / config.graph),)) in calls  # by path: external data is found
    assert ("set_memory_pool_limit", ("WORKSPACE", 256 * 2**20)) in calls
    assert ("builder_optimization_level", (4,)) in calls
    assert ("clear_flag", ("TF32",)) in calls
    assert ("profiling_verbosity", ("DETAILED",)) in calls
    assert ("create_timing_cache", (b"old",)) in calls and ("set_timing_cache", (False,)) in calls
    shapes = [args for name, args in calls if name == "set_shape"]
    inputs = [p.name for p in config.profiles[0].inputs]
    assert [s[0] for s in shapes] == inputs * 2  # every input, in each of the two profiles
    assert ("state_in.layer1.wkv", (2, 4, 16, 16), (4, 4, 16, 16), (8, 4, 16, 16)) in shapes
    assert [args for name, args in calls if name == "add_optimization_profile"] == [(0,), (1,)]
    assert calls[-1] == ("build_serialized_network", ())
    assert (tmp_path / "trt.cache").read_bytes() == b"timing-cache:old"  # saved back after the build

    record = built.record
    assert built.plan_path == package_dir / "engine.plan"
    assert record["tensorrt_version"] == "11.4.0.106" and record["gpu"] == {"name": H100.name,
                                                                            "compute_capability": "9.0"}
    assert record["build_config"] == config.to_dict()
    assert {io["name"]: (io["mode"], io["dtype"]) for io in record["io"]}["token"] == ("INPUT", "INT64")
    assert verify_package(package_dir) == []
    DeploymentPackage.open(package_dir)  # hashes every listed file, engine included


def test_a_parser_failure_names_the_nodes_and_writes_nothing(package_dir, monkeypatch):
    use_fake_tensorrt(monkeypatch, FakeTensorRT(parse_errors=[ParserError(7, "node_ln", "LayerNormalization",
                                                                          "unsupported stash_type")]))
    before = snapshot(package_dir)
    with pytest.raises(EngineBuildError, match=r"parser failed: node_ln \(LayerNormalization\): unsupported stash"):
        build_engine(package_dir, make_build_config(package_dir))
    assert snapshot(package_dir) == before


def test_a_failed_build_writes_nothing(package_dir, monkeypatch):
    use_fake_tensorrt(monkeypatch, FakeTensorRT(build_fails=True))
    before = snapshot(package_dir)
    with pytest.raises(EngineBuildError, match="could not build an engine"):
        build_engine(package_dir, make_build_config(package_dir))
    assert snapshot(package_dir) == before


def test_a_changed_graph_is_refused_before_tensorrt_parses_it(package_dir, monkeypatch):
    fake = FakeTensorRT()
    use_fake_tensorrt(monkeypatch, fake)
    graph = package_dir / read_manifest(package_dir).graphs["step"].path
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(EngineBuildError, match="sha256 does not match"):
        build_engine(package_dir, make_build_config(package_dir))
    assert not any(name == "parse_from_file" for name, _ in fake.calls)


def test_build_engine_command_prints_what_it_wrote(package_dir, monkeypatch):
    use_fake_tensorrt(monkeypatch, FakeTensorRT(version="10.13.3.9"))
    result = runner.invoke(app, ["build-engine", str(package_dir), "--batch", "1:2:4"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"wrote {package_dir / 'engine.plan'} (")
    assert "TensorRT 10.13.3.9, NVIDIA H100 80GB HBM3 sm_90, batch 1:2:4" in result.stdout


# -- engine.json and the manifest ------------------------------------------------------------------------


def test_engine_json_records_the_build(exported):
    manifest = read_manifest(exported)
    config = make_build_config(exported, ["1:1:4"])
    record = engine_record(manifest, config, FAKE_BUILD, plan_sha256="ab" * 32, plan_bytes=1234)
    graph = manifest.graphs["step"].path
    assert record == {
        "format": "rwkv-deploy-tensorrt-engine", "format_version": 1,
        "plan": "engine.plan", "plan_sha256": "ab" * 32, "plan_bytes": 1234,
        "graph": graph, "graph_sha256": manifest.files[graph], "precision": "fp32",
        "tensorrt_version": "10.13.3.9", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "build_seconds": 41.5, "io": FAKE_BUILD["io"], "build_config": config.to_dict(),
        "producer": {"name": "rwkv-deploy", "version": manifest.producer["version"]},
    }


def test_installing_an_engine_adds_both_files_to_the_manifest_and_keeps_everything_else(package_dir):
    raw_before = json.loads((package_dir / "manifest.json").read_text())
    raw_before["a_future_key"] = {"kept": True}  # keys unknown to this version must survive the rewrite
    (package_dir / "manifest.json").write_text(json.dumps(raw_before))
    manifest = read_manifest(package_dir)

    install_engine(package_dir, memoryview(b"plan bytes"), manifest, make_build_config(package_dir), FAKE_BUILD)

    raw = json.loads((package_dir / "manifest.json").read_text())
    assert raw["files"]["engine.plan"] == sha256_file(package_dir / "engine.plan")
    assert raw["files"]["engine.json"] == sha256_file(package_dir / "engine.json")
    assert (package_dir / "engine.plan").read_bytes() == b"plan bytes"
    assert raw["engines"] == {"tensorrt": {"plan": "engine.plan", "info": "engine.json"}}
    assert raw["a_future_key"] == {"kept": True}
    assert {k: v for k, v in raw.items() if k not in ("files", "engines")} == \
        {k: v for k, v in raw_before.items() if k != "files"}
    assert raw_before["files"].items() <= raw["files"].items()
    assert read_engine_record(package_dir / "engine.plan")["plan_sha256"] == raw["files"]["engine.plan"]
    assert verify_package(package_dir) == []
    assert not list(package_dir.glob(".*"))  # no temporary files left


def test_an_engine_runs_only_with_the_tensorrt_release_and_gpu_it_was_built_for(exported):
    manifest = read_manifest(exported)
    record = engine_record(manifest, make_build_config(exported), FAKE_BUILD, "00" * 32, 1)
    check_compatibility(record, manifest, "10.13.3.9", H100)
    check_compatibility(record, manifest, "10.13.3.12", H100)  # same release, another build number
    with pytest.raises(EngineError, match=r"built for TensorRT 10\.13\.3\.9 \(this machine has 10\.14\.1\.48\); "
                                          r".*rebuild it here"):
        check_compatibility(record, manifest, "10.14.1.48", H100)
    with pytest.raises(EngineError, match=r"compute capability 9\.0 \(NVIDIA H100 80GB HBM3; this GPU, NVIDIA L4, "
                                          r"is 8\.9\)"):
        check_compatibility(record, manifest, "10.13.3.9", GpuInfo("NVIDIA L4", (8, 9)))
    stale = dict(record, graph_sha256="ff" * 32)
    with pytest.raises(EngineError, match="built from another"):
        check_compatibility(stale, manifest, "10.13.3.9", H100)


def test_a_missing_engine_json_says_how_to_make_one(tmp_path):
    with pytest.raises(EngineError, match="engine.json: missing; build the engine with `rwkv-deploy build-engine"):
        read_engine_record(tmp_path / "engine.plan")


# -- real TensorRT (skips where it is not installed) -----------------------------------------------------


def test_real_tensorrt_builds_an_engine_that_verifies(package_dir, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on this project's CPU "
                                                 "machines); this test runs only where it is")
    if environment.find_gpu() is None:
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    config = make_build_config(package_dir, ["1:1:4"], timing_cache=tmp_path / "trt.cache")
    built = build_engine(package_dir, config)
    assert built.record["tensorrt_version"] == trt.__version__
    assert (tmp_path / "trt.cache").stat().st_size > 0
    assert verify_package(package_dir) == []
