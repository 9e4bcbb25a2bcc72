"""`build_engine`: a package's step graph -> a TensorRT plan in the package, written against the TensorRT
10.x/11.x Python API (docs/tensorrt.md lists every call and why).

Strongly typed network (`1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`; the flag's integer
value changed in 11.0, so it is never hard-coded), parsed with `parse_from_file` so external weights
are found, one optimization profile per batch range. No precision flags exist in TensorRT 11 and none
are set: precision is the graph's. This module imports TensorRT only inside `build_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import Manifest, read_manifest, verify_files
from rwkv_deploy.fileio import write_bytes_atomically

from .build_config import EngineBuildConfig
from .engine_files import install_engine
from rwkv_deploy.tensorrt_library import require_tensorrt_and_gpu, tensorrt_version
from .lint import lint_package

PARSER_ERRORS_SHOWN = 3


class EngineBuildError(RwkvDeployError):
    """TensorRT could not parse or build the graph, or the package is not fit to build from."""

    exit_code = 1


@dataclass(frozen=True)
class BuiltEngine:
    plan_path: Path
    record: dict[str, Any]


def build_engine(package_dir: str | Path, config: EngineBuildConfig) -> BuiltEngine:
    """Build the package's engine with `config` and install it (engine.plan, engine.json, manifest.json).

    Raises TensorRTUnavailable (exit 2, nothing written) without TensorRT or a GPU, EngineBuildError if
    the package fails its hashes or check-trt, or TensorRT cannot parse or build it."""
    package_dir = Path(package_dir)
    trt, gpu = require_tensorrt_and_gpu("build a TensorRT engine")
    manifest = _checked_package(package_dir)
    started = time.perf_counter()
    plan, io = _build_plan(trt, package_dir / config.graph, config)
    build = {"tensorrt_version": tensorrt_version(trt), "gpu": gpu.to_dict(),
             "build_seconds": round(time.perf_counter() - started, 3), "io": io}
    record = install_engine(package_dir, plan, manifest, config, build)
    return BuiltEngine(package_dir / record["plan"], record)


def _checked_package(package_dir: Path) -> Manifest:
    """The manifest of an intact package whose graph passes check-trt."""
    manifest = read_manifest(package_dir)
    problems = verify_files(package_dir, manifest)
    if problems:
        raise EngineBuildError(f"{problems[0]} (rebuild from an intact package)")
    errors = lint_package(package_dir).errors
    if errors:
        first = errors[0]
        raise EngineBuildError(f"check-trt found {len(errors)} error(s), first: {first.node} ({first.op}): "
                               f"{first.message}; run `rwkv-deploy check-trt {package_dir}`")
    return manifest


def _build_plan(trt: ModuleType, graph_path: Path, config: EngineBuildConfig) -> tuple[Any, list[dict[str, Any]]]:
    """(the serialized plan, the engine's I/O tensors) for the graph at `graph_path`."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        raise EngineBuildError(f"{graph_path}: TensorRT's ONNX parser failed: {_parser_errors(parser)}")
    builder_config, timing_cache = _builder_config(trt, builder, config)  # the cache must outlive the build
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise EngineBuildError(f"{graph_path}: TensorRT could not build an engine (see its log above; "
                               "a larger --workspace-mb or another TensorRT release may help)")
    if timing_cache is not None:
        serialized = builder_config.get_timing_cache().serialize()
        write_bytes_atomically(Path(config.timing_cache), memoryview(serialized).cast("B"))
    return plan, _engine_io(trt, logger, plan)


def _builder_config(trt: ModuleType, builder: Any, config: EngineBuildConfig) -> tuple[Any, Any]:
    """(`IBuilderConfig`, its timing cache or None) from the plain-data config: pools, level, TF32,
    verbosity, timing cache, profiles."""
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
    for profile in config.profiles:
        trt_profile = builder.create_optimization_profile()
        for shapes in profile.inputs:
            trt_profile.set_shape(shapes.name, shapes.min, shapes.opt, shapes.max)
        builder_config.add_optimization_profile(trt_profile)
    return builder_config, cache


def _parser_errors(parser: Any) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    shown = "; ".join(f"{e.node_name() or '#' + str(e.node())} ({e.node_operator()}): {e.desc()}"
                      for e in errors[:PARSER_ERRORS_SHOWN])
    more = f" (and {len(errors) - PARSER_ERRORS_SHOWN} more)" if len(errors) > PARSER_ERRORS_SHOWN else ""
    return (shown or "no error details") + more


def _engine_io(trt: ModuleType, logger: Any, plan: Any) -> list[dict[str, Any]]:
    """Name, mode, dtype and shape (-1 = dynamic) of every engine tensor: proof of what was built
    (a strongly typed fp16 graph must give fp16 weights inside but these exact fp32/int64 I/O types)."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("TensorRT built a plan it cannot deserialize")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [{"name": n, "mode": engine.get_tensor_mode(n).name, "dtype": engine.get_tensor_dtype(n).name,
             "shape": list(engine.get_tensor_shape(n))} for n in names]
