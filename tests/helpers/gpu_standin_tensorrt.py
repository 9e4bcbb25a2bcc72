"""A GPU stand-in for running TensorRT engines, the one part of TensorRT that cannot run on the project's
CPU machines (building does: the tests build real plans with TensorRT for RTX, ahead of time, on the CPU).

`GpuStandInTensorRT` is an `import tensorrt_rtx as trt` stand-in with only the *runtime* API: `Runtime`,
`deserialize_cuda_engine`, the engine's tensor queries and execution contexts, with the names and enum
values of the real module. It deserializes only plans that were really built (it finds the plan's record,
engines/<graph>.json, by the plan's sha256), and runs the graph the plan was built from with ONNX Runtime
on host numpy buffers (`HostDevice`), enforcing TensorRT's documented execution rules: profile before
shapes, every input shaped within the profile, every address set, a non-default stream, no output
aliasing an input. It shows the backend's wiring is right, not that TensorRT computes the same numbers:
that is scripts/gpu_check.sh on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
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


def _real_rtx_version() -> str:
    try:
        import tensorrt_rtx

        return tensorrt_rtx.__version__
    except ImportError:
        return "1.7.1.116"


class GpuStandInTensorRT(types.ModuleType):
    """The runtime half of `tensorrt_rtx` (or `tensorrt`, by `flavour`) for engines built into `packages`."""

    def __init__(self, *packages: Path, flavour: str = "tensorrt_rtx", version: str | None = None) -> None:
        super().__init__(flavour)
        self.__version__ = version or _real_rtx_version()
        self.memory: dict[int, np.ndarray] = {}  # device address -> buffer (filled by HostDevice)
        self.capturing: list[Callable[[], None]] | None = None  # set by HostDevice.capture
        self.deserialized = 0
        self.plans: dict[str, tuple[str, list[dict[str, list[list[int]]]]]] = {}
        for package in packages:
            self.register(package)
        self.TensorIOMode = _enum("NONE", "INPUT", "OUTPUT")
        self.DataType = _enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4")
        standin = self

        class Logger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

            def __init__(self, severity: int = 2) -> None:
                self.severity = severity

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, serialized: Any) -> "_Engine | None":
                standin.deserialized += 1
                found = standin.plans.get(hashlib.sha256(bytes(serialized)).hexdigest())
                return None if found is None else _Engine(standin, *found)

        self.Logger, self.Runtime = Logger, Runtime

    def register(self, package: Path) -> None:
        """Make the plans built into `package` deserializable (their records say graph and profiles)."""
        for record_path in sorted(Path(package).glob("engines/*.json")):
            record = json.loads(record_path.read_text())
            profiles = [{name: [s["min"], s["opt"], s["max"]] for name, s in p["inputs"].items()}
                        for p in record["build_config"]["profiles"]]
            self.plans[record["plan_sha256"]] = (str(Path(package) / record["onnx"]), profiles)


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)


class _Engine:
    """A deserialized real plan, on the stand-in: the graph's I/O as engine tensors; runs with ONNX Runtime."""

    def __init__(self, fake: GpuStandInTensorRT, graph_path: str, profiles: list[dict[str, list[list[int]]]]) -> None:
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
    """The backend's device on host memory: buffers are numpy arrays registered with the GPU stand-in by
    address; a 'stream' handle that is not the default one; graphs that replay what was captured."""

    def __init__(self, fake: GpuStandInTensorRT, gpu: GpuInfo | None = None) -> None:
        self.fake, self._gpu = fake, gpu or STANDIN_GPU
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


STANDIN_GPU = GpuInfo("NVIDIA GeForce RTX 4090 (stand-in)", (8, 9))  # in RTX's default targets


def build_rtx_engines(package_dir: Any, batches: list[str] | None = None, graph: str = "all",
                      tokens: str | None = None, targets: tuple[str, ...] = ()) -> list[Any]:
    """Build real engines into `package_dir` with TensorRT for RTX, on the CPU (build-engine's own code)."""
    from rwkv_deploy.targets.tensorrt.build_config import make_build_configs
    from rwkv_deploy.targets.tensorrt.builder import build_engines
    from rwkv_deploy.tensorrt_library import load_library

    library = load_library("rtx")
    configs = make_build_configs(package_dir, library.flavour, graph, batches, tokens, targets)
    return build_engines(package_dir, configs, library, None)


def use_gpu_standin_backend(monkeypatch: Any, *packages: Path) -> GpuStandInTensorRT:
    """Make `make_backend("tensorrt", ...)` (what --backend tensorrt calls) run the real plans of `packages`
    on the GPU stand-in and host buffers."""
    from rwkv_deploy.tensorrt_library import TensorRTLibrary
    from rwkv_deploy.runtime import tensorrt_backend

    standin = GpuStandInTensorRT(*packages)
    monkeypatch.setattr(tensorrt_backend, "_load_library", lambda flavour: TensorRTLibrary(flavour, standin))
    monkeypatch.setattr(tensorrt_backend.CudaDevice, "current", classmethod(lambda cls: HostDevice(standin, STANDIN_GPU)))
    return standin
