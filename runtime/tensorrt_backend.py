"""One recurrent step of a package's TensorRT engine (`rwkv-deploy build-engine`), state kept on the GPU.

Same interface as `OnnxStepBackend` (the `StepBackend` protocol), so `Generator` runs prefill, sampling
and batched generation on it unchanged. Written against the TensorRT 10.x/11.x Python API
(docs/tensorrt.md) and NOT yet run on real TensorRT: see that page for what was verified where.

- I/O through PyTorch CUDA tensors (`data_ptr()`), all work on one dedicated non-default stream (TensorRT
  adds device syncs on the default stream, and graphs cannot be captured there); no pycuda.
- Per call: `set_input_shape` for every input and `set_tensor_address` for every tensor, then
  `execute_async_v3(stream)`. The state lives in two fixed buffer sets; each step reads one and writes
  the other (`tensorrt_plan.StateBuffers`), so the state is never copied in steady state and never
  aliases between input and output (TensorRT does not support that).
- `cuda_graphs=True`: after an ordinary (warm-up) run at a batch size, the enqueue is captured into a
  CUDA graph per buffer set, one execution context per set (two graphs on one context is unestablished);
  later steps at that batch size replay it. A new batch size reallocates the buffers and re-captures.
- The engine's record must name this machine's TensorRT (flavour: full TensorRT or TensorRT for RTX, and
  release) and a compute capability this GPU has, else a clear EngineError (exit 2) is raised before
  TensorRT sees the plan. An RTX plan built for several targets runs on any GPU in its list.

Importing this module needs neither TensorRT nor PyTorch; constructing the backend needs both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.engines import EngineError, check_compatibility, plan_path, read_engine_record
from rwkv_deploy.package.manifest import sha256_file
from rwkv_deploy.package.names import STEP_GRAPH
from rwkv_deploy.package.profiles import BatchRange, select_profile
from rwkv_deploy.tensorrt_library import GpuInfo, TensorRTLibrary, TensorRTUnavailable, known_flavour, library_for

from .package import DeploymentPackage
from .state import RecurrentState, StateError
from .tensorrt_plan import LOGITS, STATE, TOKEN, TRT_DTYPES, Binding, IOBindingPlan, StateBuffers

ADDRESS_ALIGNMENT = 256  # TensorRT's requirement for every I/O address


class TensorRTBackendError(RefusedError):
    """The engine cannot run this package as asked (I/O mismatch, TensorRT refusing a call)."""


class CudaDevice:
    """PyTorch CUDA for the backend: buffers, one dedicated non-default stream that every operation here
    runs on (so all of them are ordered with the engine's work), and CUDA graph capture."""

    def __init__(self, torch: ModuleType, index: int) -> None:
        self.torch = torch
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(device=self.device)

    @classmethod
    def current(cls) -> "CudaDevice":
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            raise TensorRTUnavailable("the TensorRT backend needs PyTorch with CUDA and a visible GPU "
                                      "(its I/O goes through PyTorch CUDA tensors)")
        return cls(torch, torch.cuda.current_device())

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def gpu(self) -> GpuInfo:
        cuda = self.torch.cuda
        return GpuInfo(cuda.get_device_name(self.device), tuple(cuda.get_device_capability(self.device)))

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        with self.torch.cuda.stream(self.stream):
            return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.device)

    def upload(self, dst: Any, value: Any) -> None:
        src = value if isinstance(value, self.torch.Tensor) else self.torch.from_numpy(np.ascontiguousarray(value))
        with self.torch.cuda.stream(self.stream):
            dst.copy_(src)

    def clone(self, src: Any) -> Any:
        with self.torch.cuda.stream(self.stream):
            return src.clone()

    def to_host(self, src: Any) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            return src.cpu().numpy()  # a blocking copy: waits for the stream's work before it

    def address(self, tensor: Any) -> int:
        return int(tensor.data_ptr())

    def capture(self, enqueue: Callable[[], bool]) -> Any | None:
        """A CUDA graph of `enqueue()` on the stream, or None if it cannot be captured."""
        graph = self.torch.cuda.CUDAGraph()
        try:
            with self.torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                captured = enqueue()
        except RuntimeError:
            return None
        return graph if captured else None

    def replay(self, graph: Any) -> None:
        with self.torch.cuda.stream(self.stream):
            graph.replay()


@dataclass
class _BatchResources:
    """Buffers (and captured graphs, by read set) of the batch size in use."""

    plan: IOBindingPlan
    token: Any
    logits: Any
    states: StateBuffers
    graphs: dict[int, Any] = field(default_factory=dict)


class TensorRTStepBackend:
    """`step(tokens, state) -> (logits, new_state)` on the package's TensorRT engine; implements `StepBackend`.

    `engine_path`: the plan (default: the package's engines/step.plan); its record is the same name with .json.
    `device` and `tensorrt` replace the CUDA device wrapper and the TensorRT module (tests, embedding); by
    default the TensorRT the engine was built with (its record's `library.flavour`) is imported."""

    def __init__(self, package: DeploymentPackage, engine_path: str | Path | None = None, cuda_graphs: bool = False,
                 *, device: Any | None = None, tensorrt: ModuleType | None = None) -> None:
        self.package = package
        self.cuda_graphs = cuda_graphs
        plan = Path(engine_path) if engine_path is not None else package.directory / plan_path(STEP_GRAPH)
        if not plan.is_file():
            raise EngineError(f"{plan}: no TensorRT engine; build one with "
                              f"`rwkv-deploy build-engine {package.directory}`")
        record = read_engine_record(plan)
        flavour = str(record.get("library", {}).get("flavour"))
        library = TensorRTLibrary(tensorrt.__name__, tensorrt) if tensorrt is not None else _load_library(flavour)
        self.library = library
        self.device = device or CudaDevice.current()
        check_compatibility(record, package.manifest, library.flavour, library.version, self.device.gpu())
        self._runtime, self.engine = _deserialize(library.module, plan, record, package)  # runtime outlives engine
        self._check_engine_io()
        self._ranges = self._profile_ranges()
        self._contexts: list[Any] = [self.engine.create_execution_context()]
        self._context_profiles: list[int] = [0]  # a new context starts on profile 0
        self._resources: _BatchResources | None = None
        self._graphs_usable = True

    @property
    def vocab_size(self) -> int:
        return self.package.vocab_size

    @property
    def batch_ranges(self) -> list[BatchRange]:
        return list(self._ranges)

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return self.package.fresh_state(batch)

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """Feed one token per sequence: logits float32 [batch, vocab] and the state after it (on the GPU).

        Raises InputError / StateError for bad ids or a state of the wrong model, count, shape or dtype,
        and ProfileError for a batch size outside the engine's optimization profiles."""
        tokens = self.package.check_tokens(tokens)
        if state.graph_sha256 not in (None, self.package.graph_sha256):
            raise StateError("state belongs to another model (its graph sha256 differs from this package's)")
        state.check(self.package.manifest.state, batch=len(tokens))
        profile = select_profile(self._ranges, len(tokens))
        resources = self._resources_for(len(tokens))
        read = resources.states.stage(state.values)
        self.device.upload(resources.token, tokens)
        self._execute(resources, read, profile)
        logits = self.device.to_host(resources.logits)
        return logits, state.replace(resources.states.publish(1 - read))

    # -- running the engine ------------------------------------------------------------------------------
    def _execute(self, resources: _BatchResources, read: int, profile: int) -> None:
        graph = resources.graphs.get(read)
        if graph is not None:
            self.device.replay(graph)
            return
        context_index = read if self.cuda_graphs else 0
        context = self._context(context_index)
        self._configure(context_index, resources, read, profile)
        if not context.execute_async_v3(self.device.stream_handle):
            raise TensorRTBackendError("TensorRT's execute_async_v3 failed (see TensorRT's log)")
        if self.cuda_graphs and self._graphs_usable:
            self._capture(context, resources, read)

    def _configure(self, index: int, resources: _BatchResources, read: int, profile: int) -> None:
        """Profile, input shapes and every tensor address of context `index`, in TensorRT's required order."""
        context = self._contexts[index]
        if self._context_profiles[index] != profile:
            if not context.set_optimization_profile_async(profile, self.device.stream_handle):
                raise TensorRTBackendError(f"TensorRT refused optimization profile {profile}")
            self._context_profiles[index] = profile
        for name, shape in resources.plan.input_shapes().items():
            if not context.set_input_shape(name, shape):
                raise TensorRTBackendError(f"TensorRT refused input shape {list(shape)} for {name!r}")
        for binding in resources.plan.bindings(read):
            address = self.device.address(self._buffer(resources, binding))
            if address % ADDRESS_ALIGNMENT or not context.set_tensor_address(binding.name, address):
                raise TensorRTBackendError(f"TensorRT refused the buffer of {binding.name!r} (address {address:#x})")
        for name, shape in resources.plan.output_shapes().items():
            if tuple(context.get_tensor_shape(name)) != shape:
                raise TensorRTBackendError(f"engine output {name!r} has shape {list(context.get_tensor_shape(name))} "
                                           f"for batch {resources.plan.batch}, expected {list(shape)}")

    def _capture(self, context: Any, resources: _BatchResources, read: int) -> None:
        """Capture this set's enqueue after the warm-up run just done (trtexec's order: run, sync, capture)."""
        graph = self.device.capture(lambda: context.execute_async_v3(self.device.stream_handle))
        if graph is None:
            self._graphs_usable = False
            warnings.warn("this TensorRT engine cannot be captured into a CUDA graph; running without graphs",
                          RuntimeWarning, stacklevel=3)
        else:
            resources.graphs[read] = graph

    def _context(self, index: int) -> Any:
        while len(self._contexts) <= index:
            self._contexts.append(self.engine.create_execution_context())
            self._context_profiles.append(0)
        return self._contexts[index]

    def _resources_for(self, batch: int) -> _BatchResources:
        """The buffers for `batch`; a new batch size replaces them (and so drops the graphs that used them)."""
        if self._resources is None or self._resources.plan.batch != batch:
            plan = IOBindingPlan.for_manifest(self.package.manifest, batch)
            self._resources = _BatchResources(
                plan, self.device.empty(plan.token.shape, plan.token.dtype),
                self.device.empty(plan.logits.shape, plan.logits.dtype), StateBuffers(plan, self.device))
        return self._resources

    @staticmethod
    def _buffer(resources: _BatchResources, binding: Binding) -> Any:
        if binding.buffer == TOKEN:
            return resources.token
        if binding.buffer == LOGITS:
            return resources.logits
        assert binding.buffer == STATE
        return resources.states.sets[binding.set][binding.slot]

    # -- checks at load ----------------------------------------------------------------------------------
    def _check_engine_io(self) -> None:
        """The engine's tensors must be exactly the manifest's, with the dtypes the buffers will have."""
        plan = IOBindingPlan.for_manifest(self.package.manifest, 1)
        expected = {b.name: (b.mode, b.spec.dtype) for b in plan.bindings(0)}
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if set(names) != set(expected):
            differ = sorted(set(names) ^ set(expected))
            raise TensorRTBackendError(f"engine tensors do not match the manifest (differ in {', '.join(differ[:4])})")
        for name in names:
            mode = engine.get_tensor_mode(name).name.lower()
            dtype = TRT_DTYPES.get(engine.get_tensor_dtype(name).name, engine.get_tensor_dtype(name).name)
            if (mode, dtype) != expected[name]:
                raise TensorRTBackendError(f"engine tensor {name!r} is a {dtype} {mode}, the manifest says "
                                           f"{expected[name][1]} {expected[name][0]}")

    def _profile_ranges(self) -> list[BatchRange]:
        token = self.package.manifest.token_input
        ranges = []
        for index in range(self.engine.num_optimization_profiles):
            low, opt, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(token, index))
            ranges.append(BatchRange(low[0], opt[0], high[0]))
        return ranges


def _load_library(flavour: str) -> TensorRTLibrary:
    """The TensorRT an engine was built with (its record's flavour), or TensorRTUnavailable."""
    if not known_flavour(flavour):
        raise EngineError(f"the engine record names an unknown TensorRT ({flavour!r}); rebuild the engine")
    try:
        return library_for(flavour)
    except TensorRTUnavailable as exc:
        raise TensorRTUnavailable(f"cannot run the TensorRT backend: {exc}") from None


def _deserialize(trt: ModuleType, plan: Path, record: dict[str, Any],
                 package: DeploymentPackage) -> tuple[Any, Any]:
    """(runtime, engine) of `plan`, after checking it is the plan its record describes."""
    try:
        relative = plan.resolve().relative_to(package.directory.resolve()).as_posix()
    except ValueError:
        relative = None
    listed = package.manifest.files.get(relative) if relative else None
    actual = listed or sha256_file(plan)  # a listed plan's hash is checked by DeploymentPackage.open
    if actual != record.get("plan_sha256"):
        raise EngineError(f"{plan}: does not match its record {plan.with_suffix('.json').name} (sha256 differs); "
                          "rebuild the engine")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise EngineError(f"{plan}: TensorRT cannot deserialize this plan (see its log); rebuild it here "
                          f"with `rwkv-deploy build-engine {package.directory}`")
    return runtime, engine
