"""The engine's files in a package: `engine.plan` (TensorRT's serialized plan) and `engine.json` (what it was
built from, with, and for), both hashed into manifest.json.

A plan only runs on the TensorRT release and GPU compute capability it was built for, so engine.json
records both and `check_compatibility` turns a mismatch into a clear error before TensorRT sees the
plan. Every file is replaced atomically (temporary file + rename), so a crash never leaves a half-written
plan or manifest; manifest.json is rewritten last, from its raw JSON, so keys this version of
rwkv-deploy does not know survive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rwkv_deploy import __version__
from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.fileio import write_bytes_atomically
from rwkv_deploy.export.manifest import MANIFEST_NAME, Manifest

from .build_config import EngineBuildConfig
from .environment import GpuInfo

ENGINE_PLAN = "engine.plan"
ENGINE_INFO = "engine.json"
ENGINE_FORMAT = "rwkv-deploy-tensorrt-engine"
ENGINE_FORMAT_VERSION = 1


class EngineError(RwkvDeployError):
    """No usable engine: engine.json missing or malformed, or built for another TensorRT, GPU or graph."""

    exit_code = 2


def info_path(plan_path: str | Path) -> Path:
    """engine.json for engine.plan (any plan: its name with `.json`)."""
    return Path(plan_path).with_suffix(".json")


def engine_record(manifest: Manifest, config: EngineBuildConfig, build: Mapping[str, Any],
                  plan_sha256: str, plan_bytes: int) -> dict[str, Any]:
    """engine.json's content. `build` is what the build measured: tensorrt_version, gpu
    ({name, compute_capability}), build_seconds and io (the engine's tensors)."""
    return {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "plan": ENGINE_PLAN,
        "plan_sha256": plan_sha256,
        "plan_bytes": plan_bytes,
        "graph": config.graph,
        "graph_sha256": manifest.files.get(config.graph),
        "precision": manifest.graphs["step"].precision,
        "tensorrt_version": build["tensorrt_version"],
        "gpu": dict(build["gpu"]),
        "build_seconds": build["build_seconds"],
        "io": list(build.get("io", [])),
        "build_config": config.to_dict(),
        "producer": {"name": "rwkv-deploy", "version": __version__},
    }


def install_engine(package_dir: str | Path, plan: Any, manifest: Manifest, config: EngineBuildConfig,
                   build: Mapping[str, Any]) -> dict[str, Any]:
    """Write `plan` (bytes or any buffer, e.g. TensorRT's IHostMemory) and engine.json into the package and
    list both in manifest.json; returns the engine.json record."""
    package_dir = Path(package_dir)
    data = memoryview(plan).cast("B")
    plan_sha256 = hashlib.sha256(data).hexdigest()
    record = engine_record(manifest, config, build, plan_sha256, data.nbytes)
    info = (json.dumps(record, indent=2) + "\n").encode()
    raw = json.loads((package_dir / MANIFEST_NAME).read_text())
    files = dict(raw["files"], **{ENGINE_PLAN: plan_sha256, ENGINE_INFO: hashlib.sha256(info).hexdigest()})
    raw["files"] = dict(sorted(files.items()))
    raw["engines"] = {"tensorrt": {"plan": ENGINE_PLAN, "info": ENGINE_INFO}}
    write_bytes_atomically(package_dir / ENGINE_PLAN, data)
    write_bytes_atomically(package_dir / ENGINE_INFO, info)
    write_bytes_atomically(package_dir / MANIFEST_NAME, (json.dumps(raw, indent=2) + "\n").encode())
    return record


def read_engine_record(plan_path: str | Path) -> dict[str, Any]:
    """The engine.json next to `plan_path`, checked for format."""
    path = info_path(plan_path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{path}: missing; build the engine with `rwkv-deploy build-engine DIR`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: unreadable ({exc})") from None
    if record.get("format") != ENGINE_FORMAT or record.get("format_version") != ENGINE_FORMAT_VERSION:
        raise EngineError(f"{path}: not an rwkv-deploy engine record of format version {ENGINE_FORMAT_VERSION}")
    return record


def release(version: str) -> tuple[int, ...]:
    """'10.13.3.9' -> (10, 13, 3): plans are tied to major.minor.patch."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else -1)
    return tuple(parts)


def check_compatibility(record: Mapping[str, Any], manifest: Manifest, tensorrt_version: str, gpu: GpuInfo) -> None:
    """Raise EngineError unless the plan was built from this package's graph, with this TensorRT release,
    for this GPU's compute capability (TensorRT would otherwise refuse it, or worse)."""
    graph = manifest.graphs["step"].path
    if record.get("graph_sha256") != manifest.files.get(graph):
        raise EngineError(f"the engine was built from another {graph} (its sha256 differs); rebuild it with "
                          "`rwkv-deploy build-engine DIR`")
    built_trt, built_gpu = str(record.get("tensorrt_version")), record.get("gpu", {})
    here_cc = "%d.%d" % gpu.compute_capability
    problems = []
    if release(built_trt) != release(tensorrt_version):
        problems.append(f"TensorRT {built_trt} (this machine has {tensorrt_version})")
    if built_gpu.get("compute_capability") != here_cc:
        problems.append(f"compute capability {built_gpu.get('compute_capability')} ({built_gpu.get('name')}; "
                        f"this GPU, {gpu.name}, is {here_cc})")
    if problems:
        raise EngineError(f"the engine was built for {' and '.join(problems)}; a TensorRT plan runs only where it "
                          "was built: rebuild it here with `rwkv-deploy build-engine DIR`")
