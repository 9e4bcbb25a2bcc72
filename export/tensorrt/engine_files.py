"""Writing a built engine into a package: `engine.plan` and `engine.json` (the record defined in
`rwkv_deploy.package.engines`), both hashed into manifest.json.

Every file is replaced atomically (temporary file + rename), so a crash never leaves a half-written
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
from rwkv_deploy.fileio import write_bytes_atomically
from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.package.names import (ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_INFO, ENGINE_PLAN, MANIFEST_NAME,
                                       STEP_GRAPH)

from .build_config import EngineBuildConfig


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
        "precision": manifest.graphs[STEP_GRAPH].precision,
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
