"""`build_engines`: a package's graphs -> TensorRT plans in the package, with NVIDIA TensorRT 10/11 or TensorRT
for RTX (one Python API; docs/tensorrt.md lists every call and why).

Strongly typed network (`1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`; the flag's integer value
changed in 11.0, so it is never hard-coded), parsed with `parse_from_file` so external weights are found, one
optimization profile per batch range. No precision flags exist and none are set: precision is the graph's.
RTX needs no GPU: it compiles for `--compute-capability` targets (or its portable default). The engine's I/O
record comes from the deserialized engine where this machine's GPU can run the plan, else from the network
definition TensorRT built it from. This module imports TensorRT only through the library it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.fileio import write_bytes_atomically
from rwkv_deploy.package.engines import runs_on
from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.package.trust import PackageError, open_package_dir
from rwkv_deploy.tensorrt_library import TENSORRT_RTX, GpuInfo, TensorRTLibrary

from .build_config import EngineBuildConfig
from .engine_files import BuiltPlan, install_engines
from .lint import lint_package
from .targets import plan_header_targets, rtx_capabilities

PARSER_ERRORS_SHOWN = 3
WEIGHT_ONLY_PRECISIONS = ("int8", "int4")  # export/quantize.py: ONNX Runtime contrib ops


class EngineBuildError(RwkvDeployError):
    """TensorRT could not parse or build the graph, or the package is not fit to build from."""

    exit_code = 1


@dataclass(frozen=True)
class BuiltEngine:
    plan_path: Path
    record: dict[str, Any]


def build_engines(package_dir: str | Path, configs: list[EngineBuildConfig], library: TensorRTLibrary,
                  gpu: GpuInfo | None) -> list[BuiltEngine]:
    """Build every configured graph's engine with `library` and install them (plans, records, manifest.json).

    Nothing is written unless every engine built. Raises EngineBuildError if the package fails its hashes or
    check-trt, or TensorRT cannot parse or build a graph."""
    package_dir = Path(package_dir)
    targets = configs[0].targets if configs else ()
    manifest = _checked_package(package_dir, [c.name for c in configs], library.flavour, targets)
    plans = [_build(library, package_dir, manifest, config, gpu) for config in configs]
    records = install_engines(package_dir, manifest, plans)
    return [BuiltEngine(package_dir / r["plan"], r) for r in records]


def _checked_package(package_dir: Path, graphs: list[str], flavour: str, targets: tuple[str, ...]) -> Manifest:
    """The manifest of an intact package whose graphs pass check-trt for this flavour and these targets."""
    try:
        manifest = open_package_dir(package_dir)  # the trust boundary: schema, paths, hashes
    except PackageError as exc:
        raise EngineBuildError(f"{exc} (rebuild from an intact package)") from None
    quantized = sorted({manifest.graphs[g].precision for g in graphs} & set(WEIGHT_ONLY_PRECISIONS))
    if quantized:
        raise EngineBuildError(f"{package_dir}: an {quantized[0]} package cannot become a TensorRT engine: its "
                               "weight-only quantized ops are ONNX Runtime's (GatherBlockQuantized has no TensorRT "
                               "importer; MatMulNBits needs fp16 input and a plugin); export with --precision fp16 "
                               "for TensorRT")
    report = lint_package(package_dir, graphs, flavour=flavour, targets=targets)
    errors = report.errors
    if errors:
        first = errors[0]
        raise EngineBuildError(f"check-trt found {len(errors)} problem(s), first ({first.level}): {first.node} "
                               f"({first.op}): {first.message}; run `rwkv-deploy check-trt {package_dir}`")
    return manifest


def _build(library: TensorRTLibrary, package_dir: Path, manifest: Manifest, config: EngineBuildConfig,
           gpu: GpuInfo | None) -> BuiltPlan:
    trt = library.module
    graph_path = package_dir / config.graph
    started = time.perf_counter()
    logger = make_logger(trt)
    builder, network, _parser = parse_network(trt, logger, graph_path)  # the parser outlives the build
    builder_config, timing_cache = _builder_config(library, builder, config)  # the cache must outlive the build
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise EngineBuildError(f"{graph_path}: {library.name} could not build the {config.name} engine: "
                               f"{logger.last_error() or 'no error message'}")
    seconds = round(time.perf_counter() - started, 3)
    if timing_cache is not None:
        serialized = builder_config.get_timing_cache().serialize()
        write_bytes_atomically(Path(config.timing_cache), memoryview(serialized).cast("B"))
    targets, source = _targets(library, plan, config, gpu)
    runnable_here = gpu is not None and (not targets or runs_on(targets, gpu.capability))
    io = _engine_io(trt, logger, plan) if runnable_here else None
    return BuiltPlan(config.name, plan, config.to_dict(), library.to_dict(), targets, source, gpu, seconds,
                     tuple(io or network_io(network)), "engine" if io else "network")


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps the messages (errors and warnings) instead of printing them, so a failure
    is reported in one line."""
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append((severity, msg))

        def last_error(self) -> str | None:
            errors = [m for s, m in self.messages if s <= trt.ILogger.Severity.ERROR]
            return errors[-1].strip().replace("\n", " ") if errors else None

    return Logger()


def parse_network(trt: ModuleType, logger: Any, graph_path: Path) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network, parser) for the ONNX graph at `graph_path`, or EngineBuildError
    naming the nodes the parser failed on. The parser must outlive the network's use."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        raise EngineBuildError(f"{graph_path}: TensorRT's ONNX parser failed: {_parser_errors(parser)}")
    return builder, network, parser


def _builder_config(library: TensorRTLibrary, builder: Any, config: EngineBuildConfig) -> tuple[Any, Any]:
    """(`IBuilderConfig`, its timing cache or None) from the plain-data config: pools, level, TF32,
    verbosity, timing cache (full TensorRT), build targets (RTX), profiles."""
    trt = library.module
    builder_config = builder.create_builder_config()
    if config.workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    builder_config.builder_optimization_level = config.builder_optimization_level
    if config.tf32:
        builder_config.set_flag(trt.BuilderFlag.TF32)
    else:
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    builder_config.profiling_verbosity = getattr(trt.ProfilingVerbosity, config.profiling_verbosity)
    cache = None
    if config.timing_cache:
        path = Path(config.timing_cache)
        cache = builder_config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        builder_config.set_timing_cache(cache, False)  # ignore_mismatch has no default in the binding
    if config.targets:
        capabilities = rtx_capabilities(trt)
        builder_config.num_compute_capabilities = len(config.targets)
        for index, target in enumerate(config.targets):
            if not builder_config.set_compute_capability(capabilities[target], index):
                raise EngineBuildError(f"{library.name} {library.version} refused compute capability {target}")
    for profile in config.profiles:
        trt_profile = builder.create_optimization_profile()
        for shapes in profile.inputs:
            trt_profile.set_shape(shapes.name, shapes.min, shapes.opt, shapes.max)
        builder_config.add_optimization_profile(trt_profile)
    return builder_config, cache


def _targets(library: TensorRTLibrary, plan: Any, config: EngineBuildConfig,
             gpu: GpuInfo | None) -> tuple[tuple[str, ...], str]:
    """(the compute capabilities the plan runs on, where that came from)."""
    if library.flavour != TENSORRT_RTX:
        return ((gpu.capability,), "build GPU") if gpu else ((), "unknown")
    if config.targets:
        return config.targets, "--compute-capability"
    header = plan_header_targets(memoryview(plan).cast("B"), library.version)
    return (header, "plan header (library default)") if header else ((), "library default (not decoded)")


def _parser_errors(parser: Any) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    shown = "; ".join(f"{e.node_name() or '#' + str(e.node())} ({e.node_operator()}): "
                      f"{str(e.desc()).strip().replace(chr(10), ' ')}" for e in errors[:PARSER_ERRORS_SHOWN])
    more = f" (and {len(errors) - PARSER_ERRORS_SHOWN} more)" if len(errors) > PARSER_ERRORS_SHOWN else ""
    return (shown or "no error details") + more


def network_io(network: Any) -> list[dict[str, Any]]:
    """Name, mode, dtype and shape (-1 = dynamic) of every network input and output: what the engine's I/O
    is, read without a GPU (TensorRT keeps the network's I/O names and types in the engine)."""
    tensors = [("INPUT", network.get_input(i)) for i in range(network.num_inputs)]
    tensors += [("OUTPUT", network.get_output(i)) for i in range(network.num_outputs)]
    return [{"name": t.name, "mode": mode, "dtype": t.dtype.name, "shape": list(t.shape)} for mode, t in tensors]


def _engine_io(trt: ModuleType, logger: Any, plan: Any) -> list[dict[str, Any]] | None:
    """Name, mode, dtype and shape (-1 = dynamic) of every engine tensor, from the deserialized plan: proof
    of what was built. None if this machine cannot deserialize it."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        return None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [{"name": n, "mode": engine.get_tensor_mode(n).name, "dtype": engine.get_tensor_dtype(n).name,
             "shape": list(engine.get_tensor_shape(n))} for n in names]
