"""A package's TensorRT engines, as data: per graph, `engines/<graph>.plan` (the serialized plan) and
`engines/<graph>.json` (its record: what it was built from, with, and for), and whether a plan may run here.

A plan runs only with the TensorRT flavour and release it was built with, and only on the GPUs it was built
for: full TensorRT (`tensorrt`) builds for the compute capability of the GPU it ran on; TensorRT for RTX
(`tensorrt_rtx`) builds ahead of time, without a GPU, for a list of compute capabilities, and its plan runs on
any GPU in that list. The record names all of this; `check_compatibility` turns a mismatch into one clear
error before TensorRT sees the plan. Export writes these files (`targets.tensorrt.engine_files`); the runtime
reads them through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.tensorrt_library import FLAVOUR_NAMES, GpuInfo

from .manifest import Manifest
from .names import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_INFO_SUFFIX, ENGINE_PLAN_SUFFIX, ENGINES_DIR

NEWER_THAN = ">"  # a target ">12.0": any GPU newer than 12.0 (RTX's portable default includes one)


class EngineError(RefusedError):
    """No usable engine: its record missing or malformed, or built for another TensorRT, GPU or graph."""


def plan_path(graph: str) -> str:
    """The package path of `graph`'s plan: engines/<graph>.plan."""
    return f"{ENGINES_DIR}/{graph}{ENGINE_PLAN_SUFFIX}"


def info_path(plan: str | Path) -> Path:
    """The record of a plan: the plan's name with `.json`."""
    return Path(plan).with_suffix(ENGINE_INFO_SUFFIX)


def read_engine_record(plan: str | Path) -> dict[str, Any]:
    """The record next to the plan at `plan`, checked for format; read capped, never through a link."""
    from rwkv_deploy.fileio import UnsafePathError, open_regular_file

    from .schema import SchemaError, parse_json_object, read_capped

    path = info_path(plan)
    try:
        with open_regular_file(path) as f:
            record = parse_json_object(read_capped(f, str(path)), str(path))
    except FileNotFoundError:
        raise EngineError(f"{path}: missing; build the engine with `rwkv-deploy build-engine DIR`") from None
    except (OSError, UnsafePathError, SchemaError) as exc:
        raise EngineError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != ENGINE_FORMAT or \
            record.get("format_version") != ENGINE_FORMAT_VERSION:
        raise EngineError(f"{path}: not an rwkv-deploy engine record of format version {ENGINE_FORMAT_VERSION} "
                          "(rebuild it with `rwkv-deploy build-engine DIR`)")
    return record


def release(version: str) -> tuple[int, ...]:
    """'10.13.3.9' -> (10, 13, 3): plans are tied to major.minor.patch."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else -1)
    return tuple(parts)


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def runs_on(targets: Sequence[str], capability: str) -> bool:
    """Does a plan built for `targets` (as recorded) run on a GPU of compute capability `capability`?"""
    for target in targets:
        if target == capability:
            return True
        if target.startswith(NEWER_THAN) and _capability(capability) > _capability(target[len(NEWER_THAN):]):
            return True
    return False


def check_compatibility(record: Mapping[str, Any], manifest: Manifest, flavour: str, version: str,
                        gpu: GpuInfo) -> None:
    """Raise EngineError unless the plan was built from this package's graph, with this TensorRT (flavour and
    release), for this GPU (TensorRT would otherwise refuse it, or worse)."""
    onnx = record.get("onnx")
    if onnx not in manifest.files or record.get("graph_sha256") != manifest.files[onnx]:
        raise EngineError(f"the {record.get('graph')} engine was built from another {onnx} (its sha256 differs); "
                          "rebuild it with `rwkv-deploy build-engine DIR`")
    library = record.get("library") or {}
    built_name = FLAVOUR_NAMES.get(library.get("flavour"), str(library.get("flavour")))
    if library.get("flavour") != flavour:
        raise EngineError(f"the engine was built with {built_name} {library.get('version')}, which this machine "
                          f"does not run engines with (it has {FLAVOUR_NAMES.get(flavour, flavour)} {version}); "
                          "install that, or rebuild the engine here with `rwkv-deploy build-engine DIR`")
    problems = []
    if release(str(library.get("version"))) != release(version):
        problems.append(f"{built_name} {library.get('version')} (this machine has {version})")
    targets = list(record.get("targets") or [])
    if targets and not runs_on(targets, gpu.capability):
        built_on = (record.get("built_on") or {}).get("gpu") or {}
        where = f" ({built_on['name']})" if built_on.get("name") and len(targets) == 1 else ""
        problems.append(f"compute capability {', '.join(targets)}{where}; this GPU, {gpu.name}, is {gpu.capability}")
    if problems:
        raise EngineError(f"the engine was built for {' and '.join(problems)}; a TensorRT plan runs only with the "
                          "release and on the GPUs it was built for: rebuild it with `rwkv-deploy build-engine DIR`")
