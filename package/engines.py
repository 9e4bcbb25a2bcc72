"""A TensorRT engine in a package, as data: `engine.plan` (TensorRT's serialized plan) and `engine.json`
(what it was built from, with, and for), and whether a plan may run here.

A plan only runs on the TensorRT release and GPU compute capability it was built for, so engine.json
records both and `check_compatibility` turns a mismatch into a clear error before TensorRT sees the
plan. Export writes these files (`export.tensorrt.engine_files`); the runtime reads them through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.tensorrt_library import GpuInfo

from .manifest import Manifest
from .names import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, STEP_GRAPH


class EngineError(RwkvDeployError):
    """No usable engine: engine.json missing or malformed, or built for another TensorRT, GPU or graph."""

    exit_code = 2


def info_path(plan_path: str | Path) -> Path:
    """engine.json for engine.plan (any plan: its name with `.json`)."""
    return Path(plan_path).with_suffix(".json")


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
    graph = manifest.graphs[STEP_GRAPH].path
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
