"""Writing built engines into a package: per graph, `engines/<graph>.plan` and `engines/<graph>.json` (the
record read by `rwkv_deploy.package.engines`), both hashed into manifest.json and listed in its `engines`
section (`package.manifest.EngineEntry`).

Every file is replaced atomically (temporary file + rename), so a crash never leaves a half-written plan or
manifest; manifest.json is rewritten last, through `package.manifest_file.write_manifest`, from the typed
manifest on disk edited with `dataclasses.replace` (the schema admits no unknown keys, so none are lost).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rwkv_deploy import __version__
from rwkv_deploy.fileio import write_bytes_atomically
from rwkv_deploy.package.engines import info_path, plan_path
from rwkv_deploy.package.manifest import EngineEntry, Manifest
from rwkv_deploy.package.manifest_file import read_manifest, write_manifest
from rwkv_deploy.package.names import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINES_DIR
from rwkv_deploy.tensorrt_library import GpuInfo


@dataclass(frozen=True)
class BuiltPlan:
    """One engine as the builder made it: the plan, and what the build measured and decided."""

    graph: str  # step or prefill
    plan: Any  # bytes or any buffer (TensorRT's IHostMemory)
    build_config: Mapping[str, Any]
    library: Mapping[str, str]  # flavour, name, version
    targets: tuple[str, ...]
    targets_source: str
    gpu: GpuInfo | None
    build_seconds: float
    io: tuple[Mapping[str, Any], ...]
    io_source: str  # "engine" (deserialized on this GPU) or "network" (TensorRT's network definition)


def engine_record(manifest: Manifest, built: BuiltPlan, plan_sha256: str, plan_bytes: int) -> dict[str, Any]:
    """The engine's JSON record."""
    onnx = built.build_config["onnx"]
    return {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "graph": built.graph,
        "onnx": onnx,
        "graph_sha256": manifest.files.get(onnx),
        "precision": manifest.graphs[built.graph].precision,
        "plan": plan_path(built.graph),
        "plan_sha256": plan_sha256,
        "plan_bytes": plan_bytes,
        "library": dict(built.library),
        "targets": list(built.targets),
        "targets_source": built.targets_source,
        "built_on": {"gpu": built.gpu.to_dict() if built.gpu else None},
        "build_seconds": built.build_seconds,
        "io": [dict(t) for t in built.io],
        "io_source": built.io_source,
        "build_config": dict(built.build_config),
        "producer": {"name": "rwkv-deploy", "version": __version__},
    }


def manifest_entry(record: Mapping[str, Any]) -> EngineEntry:
    """The manifest's `engines.<graph>` entry for an engine record."""
    return EngineEntry(plan=record["plan"], info=info_path(record["plan"]).as_posix(),
                       library=record["library"]["flavour"], version=record["library"]["version"],
                       targets=list(record["targets"]))


def install_engines(package_dir: str | Path, manifest: Manifest, plans: Sequence[BuiltPlan]) -> list[dict[str, Any]]:
    """Write every plan and its record into the package, then list them in manifest.json (last). Engines of
    graphs not rebuilt are kept when built with the same TensorRT; otherwise they are dropped from the
    manifest (a package holds the engines of one TensorRT). Returns the records."""
    package_dir = Path(package_dir)
    on_disk = read_manifest(package_dir)  # the manifest as it is now, through the capped reader and schema
    files = dict(on_disk.files)
    engines = dict(on_disk.engines)
    writes: list[tuple[str, Any]] = []
    records = []
    for built in plans:
        data = memoryview(built.plan).cast("B")
        record = engine_record(manifest, built, hashlib.sha256(data).hexdigest(), data.nbytes)
        info = (json.dumps(record, indent=2) + "\n").encode()
        files[record["plan"]] = record["plan_sha256"]
        files[info_path(record["plan"]).as_posix()] = hashlib.sha256(info).hexdigest()
        engines[built.graph] = manifest_entry(record)
        writes += [(record["plan"], data), (info_path(record["plan"]).as_posix(), info)]
        records.append(record)
    library = (records[0]["library"]["flavour"], records[0]["library"]["version"]) if records else None
    rebuilt = {p.graph for p in plans}
    stale_files = []
    for graph, entry in list(engines.items()):
        if graph not in rebuilt and (entry.library, entry.version) != library:
            for key in (entry.plan, entry.info):
                if files.pop(key, None) is not None:
                    stale_files.append(key)
            del engines[graph]
    updated = replace(on_disk, files=dict(sorted(files.items())), engines=dict(sorted(engines.items())))
    (package_dir / ENGINES_DIR).mkdir(exist_ok=True)
    for rel, data in writes:
        write_bytes_atomically(package_dir / rel, data)
    write_manifest(package_dir, updated)
    for rel in stale_files:  # files of the engines just dropped from the manifest (listed, so ours)
        path = package_dir / rel
        if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(package_dir.resolve()):
            path.unlink()
    return records
