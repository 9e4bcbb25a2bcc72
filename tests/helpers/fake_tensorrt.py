"""A stand-in for the `tensorrt` module, for testing the code that drives TensorRT where TensorRT cannot run.

It has only the names and signatures that the TensorRT 10.x/11.x API brief
(shared/design/tensorrt_api.md) documents as present in TensorRT 11.4, with 11.x enum values, so code that
touches a removed name (BuilderFlag.FP16, EXPLICIT_BATCH, ...) or hard-codes an enum integer fails here.
It enforces the documented rules it can (set_timing_cache's two arguments, profile shape order, every
dynamic input shaped in every profile, execution context call order, a non-default stream, no output
aliasing an input, every address set) and records builder calls. Its "plan" is JSON naming the graph and
the profiles; its engines run that graph with ONNX Runtime on host numpy buffers (`HostDevice`), so the
backend's data flow is checked against ONNX Runtime. It is not TensorRT: no kernels, no precision.
"""

from __future__ import annotations

import json
import types
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from rwkv_deploy.tensorrt_library import GpuInfo
from rwkv_deploy.runtime.tensorrt_plan import NumpyBufferOps

_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64",
                onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL"}
_TRT_TO_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


class Member:
    """An enum member as pybind11 shows it: `.name`, `int()`."""

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.name}: {self.value}>"


def _enum(*names: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{n: Member(n, i) for i, n in enumerate(names)})


class ParserError:
    def __init__(self, node: int, node_name: str, operator: str, desc: str) -> None:
        self._node, self._name, self._op, self._desc = node, node_name, operator, desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc


class FakeTensorRT(types.ModuleType):
    """`import tensorrt as trt` stand-in; `calls` lists (name, args) of every recorded builder call."""

    def __init__(self, version: str = "11.4.0.106", parse_errors: list[ParserError] | None = None,
                 build_fails: bool = False) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[str, tuple]] = []
        self.parse_errors = parse_errors or []
        self.build_fails = build_fails
        self.memory: dict[int, np.ndarray] = {}  # device address -> buffer (filled by HostDevice)
        self.capturing: list[Callable[[], None]] | None = None  # set by HostDevice.capture
        self.deserialized = 0
        self.NetworkDefinitionCreationFlag = _enum("STRONGLY_TYPED", "PREFER_JIT_PYTHON_PLUGINS",
                                                   "PREFER_AOT_PYTHON_PLUGINS")  # 11.x values: STRONGLY_TYPED = 0
        self.BuilderFlag = _enum("GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
                                 "SPARSE_WEIGHTS", "DEBUG", "STRIP_PLAN", "ERROR_ON_TIMING_CACHE_MISS")
        self.MemoryPoolType = _enum("WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM",
                                    "TACTIC_DRAM", "TACTIC_SHARED_MEMORY")
        self.ProfilingVerbosity = _enum("LAYER_NAMES_ONLY", "NONE", "DETAILED")
        self.TensorIOMode = _enum("NONE", "INPUT", "OUTPUT")
        self.DataType = _enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4")
        fake = self

        class Logger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

            def __init__(self, severity: int = 2) -> None:
                self.severity = severity

        class Builder:
            def __init__(self, logger: Logger) -> None:
                fake.calls.append(("Builder", (logger.severity,)))

            def create_network(self, flags: int = 0) -> "_Network":
                fake.calls.append(("create_network", (flags,)))
                return _Network(flags)

            def create_builder_config(self) -> "_BuilderConfig":
                return _BuilderConfig(fake)

            def create_optimization_profile(self) -> "_Profile":
                return _Profile(fake)

            def build_serialized_network(self, network: "_Network", config: "_BuilderConfig") -> bytes | None:
                fake.calls.append(("build_serialized_network", ()))
                for index, profile in enumerate(config.profiles):
                    for name, shape in network.inputs.items():
                        if -1 in shape and name not in profile.shapes:
                            raise AssertionError(f"profile {index} has no shape for dynamic input {name}")
                if fake.build_fails:
                    return None
                plan = {"graph": network.graph_path, "profiles": [p.shapes for p in config.profiles]}
                return json.dumps(plan).encode()

        class OnnxParser:
            def __init__(self, network: _Network, logger: Logger) -> None:
                self.network = network

            def parse_from_file(self, model: str) -> bool:
                fake.calls.append(("parse_from_file", (model,)))
                if fake.parse_errors:
                    return False
                self.network.load(model)
                return True

            @property
            def num_errors(self) -> int:
                return len(fake.parse_errors)

            def get_error(self, index: int) -> ParserError:
                return fake.parse_errors[index]

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, serialized: Any) -> "_Engine | None":
                fake.deserialized += 1
                try:
                    plan = json.loads(bytes(serialized))
                except ValueError:
                    return None
                return _Engine(fake, plan["graph"], plan["profiles"])

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.graph_path: str | None = None
        self.inputs: dict[str, tuple[int, ...]] = {}

    def load(self, path: str) -> None:
        model = onnx.load(path, load_external_data=False)
        self.graph_path = path
        self.inputs = {v.name: _dims(v) for v in model.graph.input}


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return b"timing-cache:" + self.data


class _BuilderConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self._fake = fake
        self.profiles: list[_Profile] = []
        self._cache: _TimingCache | None = None
        self._level = 3
        self._verbosity = fake.ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_memory_pool_limit(self, pool: Member, size: int) -> None:
        self._fake.calls.append(("set_memory_pool_limit", (pool.name, size)))

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        self._fake.calls.append(("builder_optimization_level", (level,)))
        self._level = level

    @property
    def profiling_verbosity(self) -> Member:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Member) -> None:
        self._fake.calls.append(("profiling_verbosity", (value.name,)))
        self._verbosity = value

    def set_flag(self, flag: Member) -> None:
        self._fake.calls.append(("set_flag", (flag.name,)))

    def clear_flag(self, flag: Member) -> None:
        self._fake.calls.append(("clear_flag", (flag.name,)))

    def create_timing_cache(self, serialized: bytes) -> _TimingCache:
        self._fake.calls.append(("create_timing_cache", (bytes(serialized),)))
        return _TimingCache(bytes(serialized))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:  # no default, as the binding
        self._fake.calls.append(("set_timing_cache", (ignore_mismatch,)))
        self._cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._cache

    def add_optimization_profile(self, profile: "_Profile") -> int:
        self._fake.calls.append(("add_optimization_profile", (len(self.profiles),)))
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Profile:
    def __init__(self, fake: FakeTensorRT) -> None:
        self._fake = fake
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 (TRT's names)
        if not len(min) == len(opt) == len(max) or not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes")
        self._fake.calls.append(("set_shape", (input, tuple(min), tuple(opt), tuple(max))))
        self.shapes[input] = [list(min), list(opt), list(max)]


class _Engine:
    """A deserialized fake plan: the graph's I/O as engine tensors; runs with ONNX Runtime."""

    def __init__(self, fake: FakeTensorRT, graph_path: str, profiles: list[dict[str, list[list[int]]]]) -> None:
        self._fake = fake
        model = onnx.load(graph_path, load_external_data=False)
        self._io = [(v.name, "INPUT", v) for v in model.graph.input] + [(v.name, "OUTPUT", v) for v in model.graph.output]
        self._profiles = profiles
        self.session = ort.InferenceSession(graph_path, providers=["CPUExecutionProvider"])
        self.contexts: list[_Context] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def _value(self, name: str) -> tuple[str, onnx.ValueInfoProto]:
        return next((mode, v) for n, mode, v in self._io if n == name)

    def get_tensor_mode(self, name: str) -> Member:
        return getattr(self._fake.TensorIOMode, self._value(name)[0])

    def get_tensor_dtype(self, name: str) -> Member:
        return getattr(self._fake.DataType, _ONNX_TO_TRT[self._value(name)[1].type.tensor_type.elem_type])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return _dims(self._value(name)[1])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self._profiles[profile_index][name]]

    def create_execution_context(self) -> "_Context":
        self.contexts.append(_Context(self))
        return self.contexts[-1]


class _Context:
    """Enforces TensorRT's documented order: profile, input shapes, addresses, then execute on a real stream."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        assert stream_handle != 0, "the legacy default stream"
        self.profile = profile_index
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        dims = self.engine.get_tensor_shape(name)
        batch = self.shapes[self.engine.get_tensor_name(0)][0]
        return tuple(batch if d == -1 else d for d in dims)

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert stream_handle != 0, "TensorRT needs a non-default stream"
        snapshot = (dict(self.shapes), dict(self.addresses))  # what a captured graph freezes
        run = lambda: self._run(*snapshot)  # noqa: E731
        if self.engine._fake.capturing is not None:
            self.engine._fake.capturing.append(run)
        else:
            run()
        return True

    def _run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
        engine, memory = self.engine, self.engine._fake.memory
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n).name == "INPUT"]
        outputs = [n for n in names if engine.get_tensor_mode(n).name == "OUTPUT"]
        missing = [n for n in names if n not in addresses] + [n for n in inputs if n not in shapes]
        assert not missing, f"executed without address/shape for {missing}"
        assert not {addresses[n] for n in outputs} & {addresses[n] for n in inputs}, "an output aliases an input"
        feeds = {}
        for name in inputs:
            array = memory[addresses[name]]
            assert array.shape == shapes[name] and array.dtype == _TRT_TO_NUMPY[engine.get_tensor_dtype(name).name]
            feeds[name] = array.copy()
        for name, value in zip(outputs, engine.session.run(outputs, feeds)):
            target = memory[addresses[name]]
            assert target.shape == value.shape, (name, target.shape, value.shape)
            target[...] = value
        self.executions += 1


class HostDevice(NumpyBufferOps):
    """The backend's device on host memory: buffers are numpy arrays registered with the fake TensorRT by
    address; a 'stream' handle that is not the default one; graphs that replay what was captured."""

    def __init__(self, fake: FakeTensorRT, gpu: GpuInfo = GpuInfo("Fake GPU", (9, 0))) -> None:
        self.fake, self._gpu = fake, gpu
        self.stream_handle = 0x5EED
        self.captures = 0
        self.replays = 0

    def gpu(self) -> GpuInfo:
        return self._gpu

    def empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        array = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)  # garbage-like
        self.fake.memory[self.address(array)] = array
        return array

    def clone(self, src: np.ndarray) -> np.ndarray:
        return src.copy()

    def address(self, array: np.ndarray) -> int:
        return int(array.ctypes.data) * 256  # distinct per buffer, and as aligned as TensorRT wants

    def capture(self, enqueue: Callable[[], bool]) -> list[Callable[[], None]] | None:
        self.fake.capturing = []
        try:
            captured = enqueue()
            graph = self.fake.capturing
        finally:
            self.fake.capturing = None
        self.captures += 1
        return graph if captured else None

    def replay(self, graph: list[Callable[[], None]]) -> None:
        self.replays += 1
        for run in graph:
            run()


FAKE_GPU = GpuInfo("Fake GPU", (9, 0))
FAKE_VERSION = "10.13.3.9"


def build_fake_engine(package_dir: Any, batches: list[str]) -> None:
    """Build an engine into `package_dir` with the project's real build code, driving FakeTensorRT."""
    from rwkv_deploy import tensorrt_library as environment
    from rwkv_deploy.export.tensorrt.build_config import make_build_config
    from rwkv_deploy.export.tensorrt.builder import build_engine

    fake = FakeTensorRT(version=FAKE_VERSION)
    original = environment.load_tensorrt, environment.find_gpu
    environment.load_tensorrt, environment.find_gpu = (lambda: (fake, None)), (lambda: FAKE_GPU)
    try:
        build_engine(package_dir, make_build_config(package_dir, batches))
    finally:
        environment.load_tensorrt, environment.find_gpu = original


def use_fake_tensorrt_backend(monkeypatch: Any) -> None:
    """Make `make_backend("tensorrt", ...)` (what --backend tensorrt calls) run on FakeTensorRT and host buffers."""
    from rwkv_deploy.runtime import tensorrt_backend

    fake = FakeTensorRT(version=FAKE_VERSION)
    monkeypatch.setattr(tensorrt_backend, "_require_tensorrt", lambda: fake)
    monkeypatch.setattr(tensorrt_backend.CudaDevice, "current", classmethod(lambda cls: HostDevice(fake, FAKE_GPU)))
