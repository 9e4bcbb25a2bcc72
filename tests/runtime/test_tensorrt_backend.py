"""The TensorRT backend: its I/O binding plan, its two state buffer sets, and its data flow.

No GPU is available here, so:
- the binding plan and the buffer-set bookkeeping are tested as the plain code they are;
- the engine is a real plan, built on the CPU by TensorRT for RTX (the test extra installs it); running it
  needs a GPU, so the backend runs it on `tests.helpers.gpu_standin_tensorrt` (the runtime API, executed
  with ONNX Runtime on host buffers, enforcing TensorRT's call order and no input/output aliasing) and must
  give exactly what `OnnxStepBackend` gives, step by step, through generation, with and without CUDA graphs;
- the comparison on a real GPU at the end skips unless TensorRT (either flavour) and a CUDA GPU are here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy import tensorrt_library as environment
from rwkv_deploy.package.engines import EngineError
from rwkv_deploy.tensorrt_library import GpuInfo
from rwkv_deploy.package.profiles import BatchRange, ProfileError
from rwkv_deploy.runtime import DeploymentPackage, Generator, RecurrentState
from rwkv_deploy.runtime.backends import UnknownBackendError, make_backend
from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
from rwkv_deploy.runtime.tensorrt_backend import TensorRTBackendError, TensorRTStepBackend
from rwkv_deploy.runtime.tensorrt_plan import IOBindingPlan, NumpyBufferOps, StateBuffers, StateHandle
from tests.helpers.gpu_standin_tensorrt import STANDIN_GPU, GpuStandInTensorRT, HostDevice, build_rtx_engines
from tests.helpers.small_packages import VOCAB, shared, v7_manifest

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13; the engines are built with it")
GPU = STANDIN_GPU
BATCHES = ["1:1:1", "2:3:4"]  # two profiles: decode of one sequence, and small batches


# -- the binding plan ------------------------------------------------------------------------------------


def test_binding_plan_maps_every_tensor_to_its_buffer_with_shape_dtype_and_size():
    plan = IOBindingPlan.for_manifest(v7_manifest(n_layer=1), batch=3)
    rows = [(b.name, b.mode, b.buffer, b.set, b.slot, b.spec.shape, b.spec.dtype, b.spec.nbytes) for b in plan.bindings(0)]
    assert rows == [
        ("token", "input", "token", None, None, (3,), "int64", 24),
        ("state_in.layer0.att_shift", "input", "state", 0, 0, (3, 64), "float32", 768),
        ("state_in.layer0.wkv", "input", "state", 0, 1, (3, 4, 16, 16), "float32", 12288),
        ("state_in.layer0.ffn_shift", "input", "state", 0, 2, (3, 64), "float32", 768),
        ("logits", "output", "logits", None, None, (3, VOCAB), "float32", 3072),
        ("state_out.layer0.att_shift", "output", "state", 1, 0, (3, 64), "float32", 768),
        ("state_out.layer0.wkv", "output", "state", 1, 1, (3, 4, 16, 16), "float32", 12288),
        ("state_out.layer0.ffn_shift", "output", "state", 1, 2, (3, 64), "float32", 768),
    ]
    assert [(b.name, b.set) for b in plan.bindings(1) if b.buffer == "state"][::3] == [
        ("state_in.layer0.att_shift", 1), ("state_out.layer0.att_shift", 0)]
    assert plan.state_set_bytes == 768 + 12288 + 768
    assert plan.device_bytes == 24 + 3072 + 2 * plan.state_set_bytes
    assert plan.input_shapes()["state_in.layer0.wkv"] == (3, 4, 16, 16)


def test_swap_schedule_alternates_the_sets():
    assert IOBindingPlan.swap_schedule(0, 4) == [(0, 1), (1, 0), (0, 1), (1, 0)]
    assert IOBindingPlan.swap_schedule(1, 2) == [(1, 0), (0, 1)]


# -- the two buffer sets -----------------------------------------------------------------------------------


class CountingOps(NumpyBufferOps):
    def __init__(self) -> None:
        self.uploads = self.clones = 0

    def upload(self, dst, value) -> None:
        self.uploads += 1
        super().upload(dst, value)

    def clone(self, src):
        self.clones += 1
        return super().clone(src)


def fake_step(buffers: StateBuffers, values, add: float) -> list[StateHandle]:
    """What the engine does to the state: read one set, write the other."""
    read = buffers.stage(values)
    for src, dst in zip(buffers.sets[read], buffers.sets[1 - read]):
        dst[...] = src + add
    return buffers.publish(1 - read)


def test_steady_state_steps_swap_sets_without_copying():
    ops = CountingOps()
    buffers = StateBuffers(IOBindingPlan.for_manifest(v7_manifest(n_layer=1), 2), ops)
    state = [np.zeros(s.spec.shape, np.float32) for s in buffers.plan.states]
    state = fake_step(buffers, state, 1.0)  # host state: uploaded once into set 0, written to set 1
    assert ops.uploads == 3 and [h.set_index for h in state] == [1, 1, 1]
    for _ in range(5):
        state = fake_step(buffers, state, 1.0)  # the previous state is dropped each time
    assert ops.uploads == 3 and ops.clones == 0
    assert [h.set_index for h in state] == [0, 0, 0]
    np.testing.assert_array_equal(state[1].numpy(), np.full((2, 4, 16, 16), 6.0))


def test_a_state_still_held_is_moved_aside_before_its_buffers_are_overwritten():
    ops = CountingOps()
    buffers = StateBuffers(IOBindingPlan.for_manifest(v7_manifest(n_layer=1), 1), ops)
    first = fake_step(buffers, [np.zeros(s.spec.shape, np.float32) for s in buffers.plan.states], 1.0)  # set 1
    second = fake_step(buffers, first, 1.0)  # set 0
    third = fake_step(buffers, second, 1.0)  # writes set 1, where `first` still is: it is copied first
    assert ops.clones == 3 and first[0].owner is None
    assert [float(h.numpy().flat[0]) for h in (first[0], second[0], third[0])] == [1.0, 2.0, 3.0]
    branch = fake_step(buffers, second, 10.0)  # stepping again from an older, still valid state
    assert float(branch[0].numpy().flat[0]) == 12.0 and float(third[0].numpy().flat[0]) == 3.0


def test_device_state_handles_work_as_recurrent_state_values(tmp_path):
    manifest = v7_manifest(n_layer=1)
    buffers = StateBuffers(IOBindingPlan.for_manifest(manifest, 2), NumpyBufferOps())
    fresh = RecurrentState.fresh(manifest, 2)
    state = fresh.replace(fake_step(buffers, fresh.values, 0.5))
    state.check(manifest.state, batch=2)
    assert state.batch == 2 and state.rows([1]).batch == 1
    np.testing.assert_array_equal(state.numpy().values[1], np.full((2, 4, 16, 16), 0.5, np.float32))
    state.save(tmp_path / "s.npz")
    np.testing.assert_array_equal(RecurrentState.load(tmp_path / "s.npz", manifest).values[0], np.full((2, 64), 0.5))


# -- the backend: a real plan, run on the GPU stand-in ----------------------------------------------------------


@pytest.fixture(scope="module")
def built(shared_package, tmp_path_factory) -> tuple[Path, None]:
    """A v7 package with a real step engine, built by build-engine's code with TensorRT for RTX (no GPU)."""
    package_dir = Path(shutil.copytree(shared(shared_package, "7", prefill=False), tmp_path_factory.mktemp("trt") / "pkg"))
    build_rtx_engines(package_dir, BATCHES)
    return package_dir, None


def trt_backend(built, cuda_graphs: bool = False, package: DeploymentPackage | None = None,
                version: str | None = None, gpu: GpuInfo = GPU, flavour: str = "tensorrt_rtx") -> TensorRTStepBackend:
    package_dir, _ = built
    standin = GpuStandInTensorRT(package_dir, flavour=flavour, version=version)
    return TensorRTStepBackend(package or DeploymentPackage.open(package_dir), cuda_graphs=cuda_graphs,
                               device=HostDevice(standin, gpu), tensorrt=standin)


def run(backend, tokens: np.ndarray, state: RecurrentState | None = None) -> tuple[np.ndarray, RecurrentState]:
    state = state or backend.fresh_state(tokens.shape[1])
    logits = []
    for row in tokens:
        out, state = backend.step(row, state)
        logits.append(out)
    return np.stack(logits), state


def tokens(steps: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(steps, batch), dtype=np.int64)


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["plain", "cuda-graphs"])
@pytest.mark.parametrize("batch", [1, 3])
def test_steps_equal_onnx_runtime(built, batch, cuda_graphs):
    feed = tokens(12, batch, seed=batch)
    backend = trt_backend(built, cuda_graphs)
    got_logits, got_state = run(backend, feed)
    want_logits, want_state = run(OnnxStepBackend(DeploymentPackage.open(built[0])), feed)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-6, atol=1e-6)
    for name, got, want in zip(got_state.names, got_state.numpy().values, want_state.numpy().values):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
    assert all(isinstance(v, StateHandle) for v in got_state.values)  # the state stayed on the "device"
    if cuda_graphs:  # one warm-up run per buffer set, then a graph per set, replayed for the other steps
        assert (backend.device.captures, backend.device.replays) == (2, 10)


def test_generation_with_uneven_prompts_equals_onnx_runtime(built):
    """Batches shrink as prompts end and sequences finish: buffers, profiles and contexts change."""
    prompts = [[1, 2, 3, 4, 5], [9], [7, 7, 7]]
    settings = dict(max_tokens=6, temperature=0.0, stop_tokens=[0])
    got = Generator(trt_backend(built, cuda_graphs=True)).generate_batch(prompts, **settings)
    want = Generator(OnnxStepBackend(DeploymentPackage.open(built[0]))).generate_batch(prompts, **settings)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.state.numpy().values[1], b.state.numpy().values[1], rtol=1e-6, atol=1e-6)


def test_an_older_state_can_be_stepped_again(built):
    backend = trt_backend(built)
    _, state = run(backend, tokens(4, 2, seed=7))
    first, _ = backend.step(np.array([3, 4]), state)
    _, _ = run(backend, tokens(3, 2, seed=8), state)  # overwrites both buffer sets several times
    again, _ = backend.step(np.array([3, 4]), state)
    np.testing.assert_array_equal(first, again)


def test_a_state_from_onnx_runtime_continues_on_tensorrt(built):
    feed = tokens(8, 2, seed=9)
    onnx_backend = OnnxStepBackend(DeploymentPackage.open(built[0]))
    uninterrupted, _ = run(onnx_backend, feed)
    _, half_way = run(onnx_backend, feed[:4])
    continued, _ = run(trt_backend(built), feed[4:], half_way)
    np.testing.assert_allclose(continued, uninterrupted[4:], rtol=1e-6, atol=1e-6)


def test_profiles_come_from_the_engine_and_a_batch_outside_them_is_named(built):
    backend = trt_backend(built)
    assert backend.batch_ranges == [BatchRange(1, 1, 1), BatchRange(2, 3, 4)]
    with pytest.raises(ProfileError, match=r"batch 5 is outside every optimization profile .* \(1:1:1, 2:3:4\)"):
        backend.step(np.zeros(5, np.int64), backend.fresh_state(5))


def test_an_engine_from_another_tensorrt_or_for_another_gpu_is_refused_before_tensorrt_reads_it(built):
    import tensorrt_rtx

    with pytest.raises(EngineError, match=rf"built for TensorRT for RTX {tensorrt_rtx.__version__} \(this machine "
                                          r"has 1\.9\.0\.1\)") as caught:
        trt_backend(built, version="1.9.0.1")
    assert caught.value.exit_code == 2
    with pytest.raises(EngineError, match=r"built with TensorRT for RTX .* \(it has TensorRT 10\.13\.3\.9\)"):
        trt_backend(built, version="10.13.3.9", flavour="tensorrt")
    with pytest.raises(EngineError, match=r"compute capability 8\.0, 8\.6, 8\.9, 12\.0, 12\.1, >12\.0; this GPU, "
                                          r"NVIDIA H100 80GB HBM3, is 9\.0"):
        trt_backend(built, gpu=GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)))
    for gpu in (GpuInfo("NVIDIA A10", (8, 6)), GpuInfo("NVIDIA RTX PRO 6000", (12, 0)), GpuInfo("future", (13, 0))):
        trt_backend(built, gpu=gpu)  # an RTX plan runs on every GPU of its target list


def test_an_engine_whose_tensors_differ_from_the_manifest_is_refused(built):
    package = DeploymentPackage.open(built[0])
    manifest = replace(package.manifest, state=[replace(e, dtype="float16") for e in package.manifest.state])
    with pytest.raises(TensorRTBackendError, match=r"'state_in\.layer0\.att_shift' is a float32 input, the "
                                                   r"manifest says float16 input"):
        trt_backend(built, package=replace(package, manifest=manifest))


def test_a_package_without_an_engine_says_how_to_build_one(built, tmp_path):
    bare = Path(shutil.copytree(built[0], tmp_path / "bare", ignore=shutil.ignore_patterns("engines")))
    manifest = json.loads((bare / "manifest.json").read_text())  # as exported: no engines section, nothing listed
    manifest.pop("engines", None)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("engines/")}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    standin = GpuStandInTensorRT()
    with pytest.raises(EngineError, match=r"no TensorRT engine; build one with `rwkv-deploy build-engine"):
        TensorRTStepBackend(DeploymentPackage.open(bare, verify=False), device=HostDevice(standin), tensorrt=standin)


def test_make_backend_picks_by_name(built):
    package = DeploymentPackage.open(built[0])
    standin = GpuStandInTensorRT(built[0])
    assert isinstance(make_backend("tensorrt", package, device=HostDevice(standin), tensorrt=standin),
                      TensorRTStepBackend)
    assert isinstance(make_backend("onnxruntime", package, threads=1), OnnxStepBackend)
    with pytest.raises(UnknownBackendError, match="choose one of onnxruntime, tensorrt"):
        make_backend("tvm", package)


def test_the_module_imports_without_tensorrt_or_torch_and_says_what_is_missing(built):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorrt_rtx"] = None  # as if not installed
        sys.modules["torch"] = None
        from rwkv_deploy.runtime.backends import make_backend
        from rwkv_deploy.runtime import DeploymentPackage
        from rwkv_deploy.runtime.tensorrt_backend import TensorRTStepBackend
        try:
            make_backend("tensorrt", DeploymentPackage.open({str(built[0])!r}))
        except Exception as exc:
            print(type(exc).__name__, exc.exit_code, exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TensorRTUnavailable 2 cannot run the TensorRT backend: TensorRT for RTX is not "
                                    "installed")
    assert 'pip install "rwkv-deploy[tensorrt-rtx]"' in result.stdout


# -- a real engine on a real GPU (skips here) ---------------------------------------------------------------


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["plain", "cuda-graphs"])
def test_real_engine_on_a_gpu_equals_onnx_runtime(built, tmp_path, cuda_graphs):
    gpu = environment.find_gpu()
    if gpu is None:
        pytest.skip("no CUDA GPU is visible: engines run only on a GPU (scripts/gpu_check.sh runs this there)")
    library = environment.load_library("auto")
    package_dir = Path(shutil.copytree(built[0], tmp_path / "real"))
    if library.flavour == "tensorrt":  # full TensorRT builds here, for this GPU
        from rwkv_deploy.targets.tensorrt.build_config import make_build_configs
        from rwkv_deploy.targets.tensorrt.builder import build_engines

        build_engines(package_dir, make_build_configs(package_dir, library.flavour, "step", BATCHES), library, gpu)
    package = DeploymentPackage.open(package_dir)
    feed = tokens(32, 3, seed=11)
    got, _ = run(TensorRTStepBackend(package, cuda_graphs=cuda_graphs), feed)
    want, _ = run(OnnxStepBackend(package), feed)
    assert np.abs(got - want).max() <= 1e-4  # fp32 graph, TF32 cleared at build
