"""`rwkv-deploy package DIR --triton OUT`: a Triton model repository with implicit state.

What is checked here: the config parses with Triton's own model-config schema (tritonclient's
model_config_pb2), agrees with the ONNX model's inputs and outputs the way the onnxruntime backend checks
them, takes the instance and batching options, the initial-state files hold the right bytes, the repository's
model.onnx gives the package graph's outputs, and the command's options and errors. How a real Triton server
runs these repositories is in tests/deploy/test_triton_server.py; the docs' example runs against it below.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.targets import triton as triton_module
from rwkv_deploy.targets.triton import (BatchingOptions, InstanceOptions, TritonError, model_config, render_config,
                                       write_repository)
from rwkv_deploy.package.manifest import StateEntry
from rwkv_deploy.package.state_files import load_initial_arrays
from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend
from rwkv_deploy.staging import MARKER, TargetError, target_lock
from tests.helpers.small_packages import v7_manifest

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
VERSIONS = ["4", "5.2", "6", "7"]
KINDS = VERSIONS + ["6-tuned", "7-external"]
ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32"}
NP_TYPES = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


@pytest.fixture(scope="module")
def packages(small_packages) -> dict[str, Path]:
    return {kind: small_packages[kind] for kind in KINDS}


@pytest.fixture(scope="module")
def repos(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> the model directory OUT/rwkv inside a repository written by the library function."""
    root = tmp_path_factory.mktemp("triton-repos")
    return {kind: write_repository(pkg, root / kind, name="rwkv").root / "rwkv" for kind, pkg in packages.items()}


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def type_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


# -- the config against Triton's schema and the ONNX model ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_config_parses_with_tritons_schema_and_matches_the_onnx_model(repos: dict[str, Path], kind: str) -> None:
    model_dir = repos[kind]
    config = parse_config(model_dir)  # raises on any field Triton's schema does not have
    assert (config.name, config.platform, config.default_model_filename) == ("rwkv", "onnxruntime_onnx", "model.onnx")
    assert config.max_batch_size == 8 and config.WhichOneof("scheduling_choice") == "sequence_batching"
    sess = session(model_dir / "1" / "model.onnx")
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}

    # the token input: the model's [batch] becomes dims [1] reshaped to no dims, as Triton requires
    (token,) = config.input
    assert (token.name, type_name(token.data_type), list(token.dims), list(token.reshape.shape)) == \
        ("token", "TYPE_INT64", [1], [])
    assert token.HasField("reshape") and ins["token"].shape == ["batch"] and ins["token"].type == "tensor(int64)"
    (logits,) = config.output
    assert (logits.name, type_name(logits.data_type), list(logits.dims)) == ("logits", "TYPE_FP32", [256])
    assert outs["logits"].shape == ["batch", 256] and outs["logits"].type == "tensor(float)"

    # controls: inputs of the model with dims [1] after the batch axis and the configured type
    batching = config.sequence_batching
    controls = {c.name: c.control[0] for c in batching.control_input}
    assert {n: model_config_pb2.ModelSequenceBatching.Control.Kind.Name(c.kind) for n, c in controls.items()} == \
        {"START": "CONTROL_SEQUENCE_START", "READY": "CONTROL_SEQUENCE_READY"}
    for name, control in controls.items():
        assert list(control.int32_false_true) == [0, 1]
        assert ins[name].shape == ["batch", 1] and ins[name].type == "tensor(int32)"

    # states: every state_in/state_out pair of the model, dims without batch, same dtype
    state_inputs = sorted(n for n in ins if n.startswith("state_in."))
    assert sorted(s.input_name for s in batching.state) == state_inputs and state_inputs
    for state in batching.state:
        model_in, model_out = ins[state.input_name], outs[state.output_name]
        assert state.output_name == state.input_name.replace("state_in.", "state_out.", 1)
        assert model_in.shape[0] == "batch" and list(state.dims) == model_in.shape[1:] == model_out.shape[1:]
        assert type_name(state.data_type) == ORT_TYPES[model_in.type] == ORT_TYPES[model_out.type]
        assert len(state.initial_state) == 1  # a repeated field in Triton's schema
        init = state.initial_state[0]
        assert (init.name, list(init.dims), init.data_type) == (state.input_name[len("state_in."):],
                                                                list(state.dims), state.data_type)
        assert init.WhichOneof("state_data") in ("zero_data", "data_file")

    # the onnxruntime backend's own count: configured inputs + controls + states == the model's inputs
    assert len(config.input) + len(controls) + len(batching.state) == len(ins)
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert list(batching.oldest.preferred_batch_size) == [4, 8] and batching.oldest.max_queue_delay_microseconds == 500

    # one CPU instance, ONNX Runtime with 1 intra-op and 1 inter-op thread (docs/deploy.md: measured best)
    (group,) = config.instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (1, "KIND_CPU")
    assert {k: v.string_value for k, v in config.parameters.items()} == \
        {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}


def _initial_state(model_dir: Path, state: model_config_pb2.ModelSequenceBatching.State) -> np.ndarray:
    """What Triton puts in a sequence's first request: zeros, or the file's bytes in row-major order."""
    (init,) = state.initial_state
    dtype = np.dtype(NP_TYPES[type_name(init.data_type)]).newbyteorder("<")
    if init.WhichOneof("state_data") == "zero_data":
        return np.zeros(list(init.dims), dtype)
    data = (model_dir / "initial_state" / init.data_file).read_bytes()
    return np.frombuffer(data, dtype).reshape(list(init.dims))


@pytest.mark.parametrize("kind", KINDS)
def test_initial_state_files_hold_the_manifests_initial_values(repos: dict[str, Path], packages: dict[str, Path],
                                                               kind: str) -> None:
    model_dir, package = repos[kind], packages[kind]
    from rwkv_deploy.package.manifest_file import read_manifest

    manifest = read_manifest(package)
    tuned = load_initial_arrays(manifest, package)
    by_input = {s.input_name: s for s in parse_config(model_dir).sequence_batching.state}
    files = sorted(p.name for p in (model_dir / "initial_state").glob("*")) if (model_dir / "initial_state").exists() else []
    expected_files = []
    for entry in manifest.state:
        state = by_input[entry.input]
        if entry.init_file is None and entry.init == 0.0:
            assert state.initial_state[0].WhichOneof("state_data") == "zero_data"
            continue
        expected_files.append(f"{entry.name}.bin")
        assert state.initial_state[0].data_file == f"{entry.name}.bin"
        path = model_dir / "initial_state" / state.initial_state[0].data_file
        assert path.stat().st_size == int(np.prod(entry.shape[1:])) * 4  # float32
        value = _initial_state(model_dir, state)
        want = tuned[entry.name] if entry.init_file else np.full(entry.shape[1:], entry.init, np.float32)
        np.testing.assert_array_equal(value, want)
    assert files == sorted(expected_files)
    if kind == "4":
        assert expected_files == ["layer0.att_pp.bin", "layer1.att_pp.bin"]
        assert float(_initial_state(model_dir, by_input["state_in.layer0.att_pp"]).max()) == np.float32(-1e30)
    if kind == "6-tuned":
        assert expected_files == ["layer0.wkv.bin", "layer1.wkv.bin"]
        assert np.abs(tuned["layer0.wkv"]).max() > 0  # a real tuned state, not zeros
    if kind in ("5.2", "6", "7", "7-external"):
        assert expected_files == []


# -- the repository's model against the package's graph ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_repository_model_gives_the_package_graphs_outputs(repos: dict[str, Path], packages: dict[str, Path],
                                                           kind: str) -> None:
    package = DeploymentPackage.open(packages[kind])
    original, copy = session(package.graph_path), session(repos[kind] / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    batch = 3
    feeds = {"token": rng.integers(0, 256, batch).astype(np.int64)}
    for entry in package.manifest.state:
        feeds[entry.input] = rng.standard_normal([batch, *entry.shape[1:]]).astype(np.float32)
    names = [o.name for o in original.get_outputs()]
    want = original.run(names, feeds)
    controls = {"START": rng.integers(0, 2, (batch, 1)).astype(np.int32), "READY": np.ones((batch, 1), np.int32)}
    got = copy.run(names, {**feeds, **controls})
    for name, a, b in zip(names, want, got):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for bad in (-1, -256, 256):  # ONNX's Gather would take -1 as the last row: the copy refuses it like 256
        with pytest.raises(Exception, match="out of data bounds"):
            copy.run(names[:1], {**feeds, **controls, "token": np.array([5, bad, 7], np.int64)})
    if kind == "7-external":
        data = package.manifest.graphs["step"].external_data
        assert data and (repos[kind] / "1" / data).read_bytes() == (packages[kind] / data).read_bytes()
        assert (repos[kind] / "1" / "model.onnx").stat().st_size < (repos[kind] / "1" / data).stat().st_size


# -- the TensorRT plan as a second model ------------------------------------------------------------------------


def test_package_with_an_engine_gets_a_tensorrt_plan_model(packages: dict[str, Path], tmp_path: Path) -> None:
    from tests.helpers.gpu_standin_tensorrt import build_rtx_engines

    pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13")
    package = Path(shutil.copytree(packages["7"], tmp_path / "pkg"))
    build_rtx_engines(package, ["1:2:4", "4:4:16"], graph="step")  # a real plan, built without a GPU
    repo = write_repository(package, tmp_path / "repo", name="m")
    assert repo.models == ("m", "m_trt")
    plan_dir = tmp_path / "repo" / "m_trt"
    assert (plan_dir / "1" / "model.plan").read_bytes() == (package / "engines" / "step.plan").read_bytes()
    config = parse_config(plan_dir)
    assert (config.name, config.platform, config.default_model_filename) == ("m_trt", "tensorrt_plan", "model.plan")
    assert config.max_batch_size == 4  # the first profile's max, not the default 8
    assert list(config.sequence_batching.oldest.preferred_batch_size) == [4]
    assert not config.sequence_batching.control_input  # the plan has no START/READY inputs
    onnx_config = parse_config(tmp_path / "repo" / "m")
    assert config.sequence_batching.state == onnx_config.sequence_batching.state
    assert list(config.input) == list(onnx_config.input) and list(config.output) == list(onnx_config.output)


def test_engine_whose_first_profile_does_not_start_at_batch_one_is_refused(packages: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from tests.helpers.gpu_standin_tensorrt import build_rtx_engines

    pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13")
    package = Path(shutil.copytree(packages["7"], tmp_path / "pkg"))
    build_rtx_engines(package, ["2:4:8"], graph="step")
    with pytest.raises(TritonError, match=r"step\.json: the engine's first optimization profile starts at batch 2"):
        write_repository(package, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


# -- the pure parts ---------------------------------------------------------------------------------------------


def test_render_config_is_deterministic_and_takes_the_batching_options() -> None:
    manifest = v7_manifest(n_layer=1)
    options = BatchingOptions(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=100,
                              max_sequences=64, sequence_idle_us=5_000_000)
    text = render_config(model_config(manifest, "tiny", batching=options))
    assert text == render_config(model_config(manifest, "tiny", batching=options))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    oldest = config.sequence_batching.oldest
    assert config.max_batch_size == 16 and list(oldest.preferred_batch_size) == [8, 16]
    assert (oldest.max_queue_delay_microseconds, oldest.max_candidate_sequences) == (100, 64)
    assert config.sequence_batching.max_sequence_idle_microseconds == 5_000_000
    assert [s.input_name for s in config.sequence_batching.state] == [e.input for e in manifest.state]


@pytest.mark.parametrize("instances, group, parameters", [
    (InstanceOptions(), (1, "KIND_CPU"), {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}),
    (InstanceOptions(count=3, intra_op_threads=2, inter_op_threads=0), (3, "KIND_CPU"), {"intra_op_thread_count": "2"}),
    (InstanceOptions(kind="gpu"), (1, "KIND_GPU"), {}),
    (InstanceOptions(count=2, kind="gpu", intra_op_threads=4), (2, "KIND_GPU"), {"intra_op_thread_count": "4"}),
])
def test_instance_options_become_the_instance_group_and_onnx_runtime_parameters(instances, group, parameters) -> None:
    text = render_config(model_config(v7_manifest(n_layer=1), "m", instances=instances))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    (got,) = config.instance_group
    assert (got.count, model_config_pb2.ModelInstanceGroup.Kind.Name(got.kind)) == group
    assert {k: v.string_value for k, v in config.parameters.items()} == parameters
    plan = text_format.Parse(render_config(model_config(v7_manifest(n_layer=1), "m", "tensorrt_plan", controls=False,
                                                        instances=instances)), model_config_pb2.ModelConfig())
    (plan_group,) = plan.instance_group  # a TensorRT plan runs on the GPU, without ONNX Runtime's parameters
    assert (plan_group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(plan_group.kind)) == (group[0], "KIND_GPU")
    assert not plan.parameters


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "instances 0: must be between 1 and 1024"),
    ({"count": 1_000_000_000}, "instances 1000000000: must be between 1 and 1024"),
    ({"intra_op_threads": 4001}, "intra-op-threads 4001: must be 0"),
    ({"kind": "tpu"}, "kind 'tpu': choose from cpu, gpu"),
    ({"intra_op_threads": -1}, "intra-op-threads -1: must be 0"),
    ({"inter_op_threads": -2}, "inter-op-threads -2: must be 0"),
])
def test_bad_instance_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(TritonError, match=message):
        InstanceOptions(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max batch size 0"),
    ({"preferred_batch_sizes": (4, 16)}, "preferred batch size 16"),
    ({"max_queue_delay_us": -1}, "max queue delay -1"),
    ({"max_sequences": 0}, "max sequences 0"),
    ({"max_batch_size": 10**9}, "max batch size 1000000000"),
    ({"max_queue_delay_us": 10**12}, "max queue delay 1000000000000"),
    ({"max_sequences": 10**9}, "max sequences 1000000000"),
])
def test_bad_batching_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(TritonError, match=message):
        BatchingOptions(**kwargs)


def test_state_names_that_triton_would_pair_wrongly_are_refused() -> None:
    """Triton pairs state outputs with inputs by name order (server issue 8586): refuse names where that differs."""
    manifest = v7_manifest(n_layer=1)
    swapped = [StateEntry("a", "state_in.a", "state_out.z", ["batch", 4], "float32", 0.0),
               StateEntry("b", "state_in.b", "state_out.y", ["batch", 4], "float32", 0.0)]
    with pytest.raises(TritonError, match="sort differently"):
        model_config(type(manifest)(**{**manifest.__dict__, "state": swapped}), "m")
    model_config(manifest, "m")  # the exporter's own names pair correctly


# -- the command ------------------------------------------------------------------------------------------------


def test_cli_writes_archive_and_repository_together(packages: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", str(packages["7"]), "-o", str(tmp_path / "m.zip"),
                                 "--triton", str(tmp_path / "repo"), "--triton-name", "goose",
                                 "--triton-max-batch-size", "4", "--triton-preferred-batch-sizes", "2,4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.zip").is_file() and "goose" in result.output
    config = parse_config(tmp_path / "repo" / "goose")
    assert config.max_batch_size == 4 and list(config.sequence_batching.oldest.preferred_batch_size) == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip", "repo"]  # no temporary folder left


def test_cli_archive_alone_still_works(packages: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", str(packages["7"]), "-o", str(tmp_path / "m.zip")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]


def test_cli_needs_an_archive_or_a_repository(packages: dict[str, Path]) -> None:
    result = runner.invoke(app, ["package", str(packages["7"])])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: package: give -o FILE (archive), --triton DIR "
                                                  "(Triton repository) and/or --genai DIR (ONNX Runtime GenAI "
                                                  "folder)"]


def test_cli_refuses_a_non_empty_output_without_force(packages: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["package", str(packages["7"]), "--triton", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {out}: exists and is not empty (use --force to replace it)"
    assert (out / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["package", str(packages["7"]), "--triton", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["v7-fp32-seed1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_cli_takes_the_instance_and_sequence_options(packages: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", str(packages["7"]), "--triton", str(tmp_path / "repo"), "--triton-name",
                                 "m", "--instances", "2", "--kind", "cpu", "--intra-op-threads", "2",
                                 "--inter-op-threads", "1", "--max-sequences", "5", "--idle-timeout", "2.5"])
    assert result.exit_code == 0, result.output
    config = parse_config(tmp_path / "repo" / "m")
    assert (config.instance_group[0].count, config.sequence_batching.oldest.max_candidate_sequences) == (2, 5)
    assert config.sequence_batching.max_sequence_idle_microseconds == 2_500_000
    assert {k: v.string_value for k, v in config.parameters.items()} == \
        {"intra_op_thread_count": "2", "inter_op_thread_count": "1"}
    result = runner.invoke(app, ["package", str(packages["7"]), "--triton", str(tmp_path / "gpu"), "--triton-name",
                                 "m", "--triton-kind", "gpu", "--triton-instances", "3"])
    assert result.exit_code == 0, result.output
    config = parse_config(tmp_path / "gpu" / "m")
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (3, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    assert not config.parameters  # ONNX Runtime's own thread defaults on a GPU


@pytest.mark.parametrize("args, message", [
    (["--instances", "0"], "instances 0: must be between 1 and 1024"),
    (["--instances", "1000000000"], "instances 1000000000: must be between 1 and 1024"),
    (["--kind", "tpu"], "kind 'tpu': choose from cpu, gpu"),
    (["--intra-op-threads", "-1"], "intra-op-threads -1: must be 0 (ONNX Runtime's default) to 1024"),
    (["--max-sequences", "0"], "max sequences 0: must be between 1 and 65536"),
    (["--idle-timeout", "0"], "--triton-idle-timeout 0: expected a positive number of seconds"),
    (["--idle-timeout", "nan"], "--triton-idle-timeout nan: expected a positive number of seconds"),
    (["--idle-timeout", "1e30"], "--triton-idle-timeout 1e+30: expected a positive number of seconds"),
    (["--triton-preferred-batch-sizes", "4,x"], "--triton-preferred-batch-sizes '4,x': expected whole numbers"),
    (["--triton-preferred-batch-sizes", "16"], "preferred batch size 16: must be between 1 and the max batch size"),
    (["--triton-name", "bad name"], "model name 'bad name': use letters"),
    (["--triton-name", "m\n"], "model name 'm\\n': use letters"),  # a trailing newline: fullmatch, not match
    (["--triton-name", "../m"], "model name '../m': use letters"),
    (["--triton-name", "a..b"], "model name 'a..b': use letters"),
])
def test_cli_bad_options_get_one_line(packages: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["package", str(packages["7"]), "--triton", str(tmp_path / "repo"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "repo").exists()


def test_cli_refuses_triton_options_without_a_triton_directory(packages: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["package", str(packages["7"]), "-o", str(tmp_path / "m.zip"), "--instances", "2"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --triton-instances: a Triton option, given without --triton DIR"
    assert not list(tmp_path.iterdir())


def test_cli_names_the_broken_file_of_a_bad_package(packages: dict[str, Path], tmp_path: Path) -> None:
    package = Path(shutil.copytree(packages["7"], tmp_path / "pkg"))
    graph = next(package.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-10])
    result = runner.invoke(app, ["package", str(package), "--triton", str(tmp_path / "repo")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {package}: not written as a Triton repository")
    assert f"fails verification: {graph.name}: sha256 does not match" in lines[0]
    assert not (tmp_path / "repo").exists()
    result = runner.invoke(app, ["package", str(tmp_path / "nowhere"), "--triton", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "nowhere: no such package directory" in result.output


def test_a_failure_while_writing_leaves_nothing_behind(packages: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("disk full")

    out = tmp_path / "repo"
    write_repository(packages["4"], out, name="old")
    monkeypatch.setattr(triton_module, "_write_initial_states", broken)
    with pytest.raises(OSError, match="disk full"):
        write_repository(packages["4"], out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # the old repository is untouched



def test_a_second_writer_is_refused_and_a_killed_writers_leftovers_are_cleaned(packages: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "repo"
    with target_lock(out):  # another run holds the repository
        with pytest.raises(TargetError, match="another rwkv-deploy run"):
            write_repository(packages["4"], out, name="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    killed = tmp_path / ".repo.tmp-999999999-x"  # what a SIGKILLed writer (a pid that no longer runs) left
    killed.mkdir()
    (killed / MARKER).write_text(json.dumps({"pid": 999999999, "uid": os.getuid(), "target": "repo"}))
    (killed / "half.onnx").write_bytes(b"x")
    repo = write_repository(packages["4"], out, name="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert MARKER not in repo.files and all((out / f).is_file() for f in repo.files)

# -- docs/deploy.md: the Triton section's examples, executed ----------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def triton_section() -> str:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    start = text.index("\n## Triton Inference Server\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def code_blocks(section: str, language: str) -> list[str]:
    parts = section.split("```")
    return [part[len(language) + 1:] for part in parts[1::2] if part.startswith(language + "\n")]


def test_deploy_doc_triton_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture, triton_server) -> None:
    """The section's commands as written; its client code and bench-triton command against the real server
    (the documented address swapped for the test server's)."""
    import json
    import shlex

    import tritonclient.grpc

    section = triton_section()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(REPO_ROOT / "models")
    lines = [line for block in code_blocks(section, "bash") for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("rwkv-deploy ")]
    assert [c.split()[1] for c in commands] == ["export", "package", "bench-triton"]
    for command in commands[:2]:  # export and package, as written
        result = runner.invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}: {result.output}"
    package_args = shlex.split(commands[1])
    repo_dir = package_args[package_args.index("--triton") + 1]
    model = package_args[package_args.index("--triton-name") + 1]
    (serve,) = [line for line in lines if line.startswith("scripts/triton_server.sh ")]
    assert shlex.split(serve)[1:4] == [repo_dir, "--http-port", "8000"] and "--grpc-port 8001" in serve
    (docker,) = [b for b in code_blocks(section, "bash") if "docker run" in b]
    assert f'"$PWD/{repo_dir}:/models"' in docker and "tritonserver --model-repository=/models" in docker
    triton_server.add_model_dir(tmp_path / repo_dir / model)

    # what the Python runtime generates greedily from the same package
    package = DeploymentPackage.open(tmp_path / "pkg")
    backend = OnnxStepBackend(package, threads=1)
    prompt, state, new = b"def ", backend.fresh_state(1), []
    for token in prompt:
        logits, state = backend.step(np.array([token], np.int64), state)
    for _ in range(64):
        new.append(int(np.argmax(logits[0])))
        logits, state = backend.step(np.array([new[-1]], np.int64), state)
    expected = (prompt + bytes(new)).decode(errors="replace") + "\n"

    (client_code,) = code_blocks(section, "python")
    real_client = tritonclient.grpc.InferenceServerClient
    urls = []
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient",
                        lambda url, *a, **k: urls.append(url) or real_client(triton_server.url, *a, **k))
    capsys.readouterr()
    exec(compile(client_code, "docs/deploy.md (Triton client)", "exec"), {"__name__": "__doc_example__"})
    assert capsys.readouterr().out == expected
    assert urls == ["localhost:8001"]
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", real_client)
    with pytest.raises(tritonclient.utils.InferenceServerException, match="must specify the START flag"):
        request = tritonclient.grpc.InferInput("token", [1, 1], "INT64")
        request.set_data_from_numpy(np.array([[1]], np.int64))
        real_client(triton_server.url).infer(model, [request], sequence_id=42)  # the example ended its sequence

    bench = shlex.split(commands[2].replace("127.0.0.1:8001", triton_server.url))
    result = runner.invoke(app, bench[1:] + ["--quiet"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["errors"] == 0 and figures["answered"] == figures["requests"] > 0
    assert figures["check"]["sequences_identical"] == figures["check"]["sequences_checked"] > 0


@pytest.mark.parametrize("hostile", ["../../outside", "/tmp/outside", 'a"; b', "a\nb", "layer0.wkv\n", ".hidden"])
def test_a_state_name_that_would_leave_the_repository_or_inject_config_text_is_refused(
        packages: dict[str, Path], tmp_path: Path, hostile: str) -> None:
    """A state name becomes initial_state/<name>.bin and config.pbtxt text: the manifest schema's name grammar
    refuses it before anything is written (RWKV-4 has a non-zero initial state, so a data file would be)."""
    package = Path(shutil.copytree(packages["4"], tmp_path / "pkg"))
    manifest = json.loads((package / "manifest.json").read_text())
    old = manifest["state"][0]["name"]
    manifest["state"][0].update(name=hostile, input=f"state_in.{hostile}", output=f"state_out.{hostile}")
    (package / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["package", str(package), "--triton", str(tmp_path / "repo" / "inner")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "state[0].name" in lines[0] and "is not an allowed value" in lines[0], lines
    assert not (tmp_path / "repo").exists() and not (tmp_path / "outside.bin").exists()
    assert old != hostile
