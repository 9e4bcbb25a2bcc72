"""`build-engine` with real TensorRT for RTX on this CPU-only machine (the test extra installs it): every
version x fp32/fp16 x step/prefill builds a real plan, the engine's I/O record matches the manifest, the
package still verifies; int8/int4, unsupported targets and full-TensorRT-only options are refused in one
line with nothing written; the record says what the plan runs on, and the runtime check reads it.

Engines are built once per package (module fixtures) and shared by the tests that only read them.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.manifest import sha256_file
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.targets.tensorrt import builder as builder_module
from rwkv_deploy import tensorrt_library as environment
from rwkv_deploy.targets.tensorrt.build_config import EngineBuildConfig, make_build_configs
from rwkv_deploy.targets.tensorrt.builder import EngineBuildError, build_engines
from rwkv_deploy.package.engines import EngineError, check_compatibility, read_engine_record
from rwkv_deploy.tensorrt_library import GpuInfo, TensorRTUnavailable, load_library
from rwkv_deploy.targets.tensorrt.lint import PackageLintReport
from rwkv_deploy.targets.tensorrt.targets import plan_header_targets
from rwkv_deploy.package.verify import verify_package
from rwkv_deploy.models.bundled import bundled_checkpoint
from rwkv_deploy.runtime.package import DeploymentPackage
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

trt = pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13; it is missing here")

runner = CliRunner()
VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7")
MATRIX = [(v, p) for v in VERSIONS for p in ("fp32", "fp16")]
DEFAULT_TARGETS = ["8.0", "8.6", "8.9", "12.0", "12.1", ">12.0"]  # RTX 1.7's portable default (plan header)
TRT_DTYPES = {"float32": "FLOAT", "int64": "INT64"}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def build(package: Path, *options: str) -> "CliRunner.invoke":
    return runner.invoke(app, ["build-engine", str(package), "--trt", "rtx", *options])


@pytest.fixture(scope="module")
def built(shared_package, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every version x precision package, with both engines built by a plain `build-engine PKG` (RTX, no GPU)."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for version, precision in MATRIX:
        package = Path(shutil.copytree(shared(shared_package, version, precision), root / f"v{version}-{precision}"))
        result = build(package, "--batch", "1:2:4")
        assert result.exit_code == 0, result.output
        out[(version, precision)] = package
    return out


@pytest.fixture
def package_dir(shared_package, tmp_path) -> Path:
    """A fresh copy of the v7 fp32 package (with prefill) for tests that write into it."""
    return Path(shutil.copytree(shared(shared_package, "7"), tmp_path / "pkg"))


def expected_io(manifest, graph: str) -> list[dict]:
    """The engine I/O a package's graph must give: names, modes, dtypes and shapes (-1 = dynamic)."""
    vocab = manifest.model.vocab_size
    tokens = ("tokens", [-1, -1]) if graph == "prefill" else (manifest.token_input, [-1])
    rows = [{"name": tokens[0], "mode": "INPUT", "dtype": "INT64", "shape": tokens[1]}]
    rows += [{"name": s.input, "mode": "INPUT", "dtype": TRT_DTYPES[s.dtype], "shape": [-1, *s.shape[1:]]}
             for s in manifest.state]
    rows += [{"name": manifest.logits_output, "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, vocab]}]
    rows += [{"name": s.output, "mode": "OUTPUT", "dtype": TRT_DTYPES[s.dtype], "shape": [-1, *s.shape[1:]]}
             for s in manifest.state]
    return rows


# -- every version, both precisions, both graphs ----------------------------------------------------------


@pytest.mark.parametrize("key", MATRIX, ids=lambda k: f"v{k[0]}-{k[1]}")
def test_every_package_builds_real_engines_whose_io_matches_the_manifest(built, key):
    package = built[key]
    manifest = read_manifest(package)
    raw = json.loads((package / "manifest.json").read_text())
    assert sorted(raw["engines"]) == ["prefill", "step"]
    for graph in ("step", "prefill"):
        entry = raw["engines"][graph]
        record = read_engine_record(package / entry["plan"])
        assert (entry["plan"], entry["info"]) == (f"engines/{graph}.plan", f"engines/{graph}.json")
        assert (entry["library"], entry["version"]) == ("tensorrt_rtx", trt.__version__)
        assert record["io"] == expected_io(manifest, graph) and record["io_source"] == "network"
        assert record["precision"] == key[1] and record["graph"] == graph
        assert record["graph_sha256"] == manifest.files[manifest.graphs[graph].path]
        assert record["targets"] == entry["targets"] == DEFAULT_TARGETS
        assert record["built_on"] == {"gpu": None}
        plan = (package / entry["plan"]).read_bytes()
        assert len(plan) == record["plan_bytes"] > 100_000
        assert plan_header_targets(plan, trt.__version__) == tuple(DEFAULT_TARGETS)
    prefill = read_engine_record(package / "engines/prefill.plan")["build_config"]["profiles"][0]
    assert prefill["tokens"] == {"min": 1, "opt": 64, "max": 512} and prefill["inputs"]["tokens"]["max"] == [4, 512]
    assert verify_package(package) == []
    DeploymentPackage.open(package)  # hashes every listed file, engines included


def test_the_bundled_model_builds(tmp_path):
    """Its step graph only: the prefill export costs a minute of CI, and prefill engines are built above."""
    package = tmp_path / "bundled"
    export_package(bundled_checkpoint(), package, ExportOptions())
    result = build(package)
    assert result.exit_code == 0, result.output
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [f"wrote {package / 'engines/step.plan'}"]
    assert "TensorRT for RTX" in result.stdout and "built without a GPU" in result.stdout
    record = read_engine_record(package / "engines/step.plan")
    assert record["io"] == expected_io(read_manifest(package), "step") and record["targets"] == DEFAULT_TARGETS
    assert verify_package(package) == []


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_only_quantized_packages_get_one_line_exit_1_and_nothing_written(shared_package, tmp_path, precision):
    package = Path(shutil.copytree(shared(shared_package, "7", precision, prefill=False), tmp_path / "pkg"))
    before = snapshot(package)
    result = build(package)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line == (f"error: {package}: an {precision} package cannot become a TensorRT engine: its weight-only "
                    "quantized ops are ONNX Runtime's (GatherBlockQuantized has no TensorRT importer; MatMulNBits "
                    "needs fp16 input and a plugin); export with --precision fp16 for TensorRT")
    assert snapshot(package) == before


# -- options -------------------------------------------------------------------------------------------------


def test_explicit_compute_capabilities_are_built_recorded_and_in_the_plan(package_dir):
    result = build(package_dir, "--graph", "step", "--compute-capability", "8.6", "--compute-capability", "sm_120",
                   "--compute-capability", "86")
    assert result.exit_code == 0, result.output
    assert "for compute capability 8.6, 12.0, built without a GPU" in result.stdout
    record = read_engine_record(package_dir / "engines/step.plan")
    assert record["targets"] == ["8.6", "12.0"] and record["targets_source"] == "--compute-capability"
    assert plan_header_targets((package_dir / "engines/step.plan").read_bytes(), trt.__version__) == ("8.6", "12.0")
    assert list(json.loads((package_dir / "manifest.json").read_text())["engines"]) == ["step"]
    assert EngineBuildConfig.from_dict(record["build_config"]).targets == ("8.6", "12.0")


def test_hopper_and_other_unsupported_targets_get_one_line_and_nothing_written(package_dir):
    before = snapshot(package_dir)
    result = build(package_dir, "--compute-capability", "9.0")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --compute-capability 9.0: TensorRT for RTX {trt.__version__} cannot build for "
                           "compute capability 9.0 (it builds for 7.5, 8.0, 8.6, 8.9, 12.0, 12.1;")
    assert snapshot(package_dir) == before


def test_an_fp32_package_for_turing_is_refused_by_check_trt(package_dir):
    before = snapshot(package_dir)
    result = build(package_dir, "--compute-capability", "7.5")
    assert result.exit_code == 1 and "FP32 GEMM is not supported" in result.stderr
    assert snapshot(package_dir) == before


def test_timing_cache_is_refused_under_rtx_in_one_line(package_dir, tmp_path):
    result = build(package_dir, "--timing-cache", str(tmp_path / "t.cache"))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "TensorRT for RTX has no timing cache" in line
    assert not (package_dir / "engines").exists() and not (tmp_path / "t.cache").exists()


def test_graph_and_tokens_options(package_dir, shared_package, tmp_path):
    result = build(package_dir, "--graph", "prefill", "--tokens", "1:16:128", "--batch", "1:1:1")
    assert result.exit_code == 0, result.output
    record = read_engine_record(package_dir / "engines/prefill.plan")
    assert record["build_config"]["profiles"][0]["inputs"]["tokens"] == {"min": [1, 1], "opt": [1, 16],
                                                                         "max": [1, 128]}
    assert build(package_dir, "--graph", "step").exit_code == 0  # the prefill engine (same library) is kept
    assert sorted(json.loads((package_dir / "manifest.json").read_text())["engines"]) == ["prefill", "step"]
    assert verify_package(package_dir) == []
    step_only = Path(shutil.copytree(shared(shared_package, "7", prefill=False), tmp_path / "step-only"))
    result = build(step_only, "--graph", "prefill")
    assert result.exit_code == 2 and "the package has no prefill graph" in result.stderr
    result = build(step_only, "--tokens", "1:2:4")
    assert result.exit_code == 2 and "no prefill engine is built" in result.stderr


def test_auto_picks_rtx_when_full_tensorrt_is_missing_and_tensorrt_needs_a_gpu(package_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, whatever is installed
    assert load_library("auto").flavour == "tensorrt_rtx"
    result = runner.invoke(app, ["build-engine", str(package_dir), "--trt", "tensorrt"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        'error: TensorRT is not installed; install it with `pip install "rwkv-deploy[tensorrt]"` on a machine with '
        "an NVIDIA GPU, using NVIDIA's package index (--extra-index-url https://pypi.nvidia.com)"]
    stub = types.ModuleType("tensorrt")
    stub.Builder, stub.__version__ = object, "10.13.3.9"
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    monkeypatch.setattr(environment, "find_gpu", lambda: None)
    before = snapshot(package_dir)
    result = runner.invoke(app, ["build-engine", str(package_dir)])  # auto: full TensorRT, which needs the GPU
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.stderr and "--trt rtx" in result.stderr
    assert snapshot(package_dir) == before


def test_a_parser_failure_names_the_node_and_writes_nothing(package_dir, monkeypatch):
    """check-trt predicts every parser failure it knows of, so it is bypassed here to reach the parser."""
    manifest = read_manifest(package_dir)
    graph = package_dir / manifest.graphs["step"].path
    model = onnx.load(str(graph), load_external_data=False)
    model.graph.node[0].op_type = "Det"  # no importer
    raw = json.loads((package_dir / "manifest.json").read_text())
    onnx.save(model, str(graph))
    raw["files"][manifest.graphs["step"].path] = sha256_file(graph)
    (package_dir / "manifest.json").write_text(json.dumps(raw))
    monkeypatch.setattr(builder_module, "lint_package", lambda *a, **k: PackageLintReport("tensorrt_rtx", (), ()))
    before = snapshot(package_dir)
    library = load_library("rtx")
    with pytest.raises(EngineBuildError, match=rf"TensorRT's ONNX parser failed: {model.graph.node[0].name} \(Det\)"):
        build_engines(package_dir, make_build_configs(package_dir, library.flavour, "step"), library, None)
    assert snapshot(package_dir) == before


# -- the record and the runtime's check ----------------------------------------------------------------------


def test_an_rtx_engine_runs_on_any_gpu_of_its_list_and_with_its_release_only(built):
    package = built[("7", "fp16")]
    manifest = read_manifest(package)
    record = read_engine_record(package / "engines/step.plan")
    for gpu in (GpuInfo("NVIDIA GeForce RTX 3090", (8, 6)), GpuInfo("NVIDIA A100", (8, 0)),
                GpuInfo("NVIDIA GeForce RTX 5090", (12, 0)), GpuInfo("a newer GPU", (12, 3))):
        check_compatibility(record, manifest, "tensorrt_rtx", trt.__version__, gpu)
    with pytest.raises(EngineError, match=r"compute capability 8\.0, 8\.6, 8\.9, 12\.0, 12\.1, >12\.0; this GPU, "
                                          r"NVIDIA H100 80GB HBM3, is 9\.0"):
        check_compatibility(record, manifest, "tensorrt_rtx", trt.__version__, GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)))
    with pytest.raises(EngineError, match=r"built with TensorRT for RTX .* \(it has TensorRT 10\.13\.3\.9\)"):
        check_compatibility(record, manifest, "tensorrt", "10.13.3.9", GpuInfo("NVIDIA L4", (8, 9)))
    with pytest.raises(EngineError, match=rf"TensorRT for RTX {trt.__version__} \(this machine has 1\.8\.0\.2\)"):
        check_compatibility(record, manifest, "tensorrt_rtx", "1.8.0.2", GpuInfo("NVIDIA L4", (8, 9)))
    full = dict(record, library={"flavour": "tensorrt", "name": "TensorRT", "version": "10.13.3.9"}, targets=["9.0"],
                built_on={"gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}})
    check_compatibility(full, manifest, "tensorrt", "10.13.3.12", GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)))
    with pytest.raises(EngineError, match=r"compute capability 9\.0 \(NVIDIA H100 80GB HBM3\); this GPU, NVIDIA L4, "
                                          r"is 8\.9"):
        check_compatibility(full, manifest, "tensorrt", "10.13.3.9", GpuInfo("NVIDIA L4", (8, 9)))
    with pytest.raises(EngineError, match="built from another"):
        check_compatibility(dict(record, graph_sha256="ff" * 32), manifest, "tensorrt_rtx", trt.__version__,
                            GpuInfo("NVIDIA L4", (8, 9)))


def test_a_missing_record_says_how_to_make_one(tmp_path):
    with pytest.raises(EngineError, match=r"step\.json: missing; build the engine with `rwkv-deploy build-engine"):
        read_engine_record(tmp_path / "engines" / "step.plan")


def test_full_tensorrt_options_are_checked_before_anything_is_built(package_dir, tmp_path):
    configs = make_build_configs(package_dir, "tensorrt", "all", ["1:1:4"], timing_cache=tmp_path / "t.cache")
    assert [c.name for c in configs] == ["step", "prefill"] and configs[0].timing_cache == str(tmp_path / "t.cache")
    with pytest.raises(Exception, match="--compute-capability is for TensorRT for RTX"):
        make_build_configs(package_dir, "tensorrt", targets=("8.6",))
    with pytest.raises(TensorRTUnavailable, match="--trt tpu: expected one of auto, tensorrt, rtx"):
        load_library("tpu")


def test_verify_checks_the_engines_section(built, tmp_path):
    def verify_with(edit) -> list[str]:
        package = Path(shutil.copytree(built[("5.2", "fp32")], tmp_path / f"pkg{len(list(tmp_path.iterdir()))}"))
        raw = json.loads((package / "manifest.json").read_text())
        edit(raw["engines"])
        (package / "manifest.json").write_text(json.dumps(raw))
        return verify_package(package)

    assert verify_with(lambda engines: None) == []
    assert "manifest.json: engines.step.plan 'engines/other.plan' is not listed in files (its hash cannot be " \
           "checked)" in verify_with(lambda engines: engines["step"].update(plan="engines/other.plan"))
    assert verify_with(lambda engines: engines.update(decode=dict(engines["prefill"]))) == [
        "manifest.json: engines.decode is an engine of 'decode', which is not in graphs"]
