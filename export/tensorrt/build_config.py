"""Everything `build-engine` passes to the TensorRT builder, as plain data.

The builder (`builder.py`) only translates this into API calls, so what an engine was built with can be
tested without TensorRT and is recorded verbatim in `engine.json`. There is no precision setting on
purpose: the network is strongly typed, so precision comes from the ONNX graph (TensorRT 11 removed the
FP16/INT8 builder flags and weakly typed builds). TF32 is the one math-mode flag left; it is cleared
unless asked for, so an fp32 package gives a true fp32 engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import read_manifest
from rwkv_deploy.package.names import STEP_GRAPH

from rwkv_deploy.package.profiles import OptimizationProfile, make_profiles, parse_batch_ranges

DEFAULT_OPT_LEVEL = 3  # TensorRT's default; 0..5
NETWORK_FLAGS = ("STRONGLY_TYPED",)


class BuildConfigError(RwkvDeployError, ValueError):
    exit_code = 2


@dataclass(frozen=True)
class EngineBuildConfig:
    graph: str  # the step graph, relative to the package directory
    profiles: tuple[OptimizationProfile, ...]
    builder_optimization_level: int = DEFAULT_OPT_LEVEL
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: str | None = None  # read if present, written after the build
    detailed_profiling: bool = False
    tf32: bool = False

    @property
    def profiling_verbosity(self) -> str:
        return "DETAILED" if self.detailed_profiling else "LAYER_NAMES_ONLY"

    def to_dict(self) -> dict[str, Any]:
        """The record written to engine.json (`build_config`)."""
        return {
            "onnx": self.graph,
            "network_flags": list(NETWORK_FLAGS),
            "builder_flags": {"TF32": self.tf32},
            "memory_pool_limits": {"WORKSPACE": self.workspace_bytes},
            "builder_optimization_level": self.builder_optimization_level,
            "profiling_verbosity": self.profiling_verbosity,
            "timing_cache": self.timing_cache,
            "profiles": [p.to_dict() for p in self.profiles],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineBuildConfig":
        return cls(graph=data["onnx"], profiles=tuple(OptimizationProfile.from_dict(p) for p in data["profiles"]),
                   builder_optimization_level=data["builder_optimization_level"],
                   workspace_bytes=data["memory_pool_limits"]["WORKSPACE"], timing_cache=data["timing_cache"],
                   detailed_profiling=data["profiling_verbosity"] == "DETAILED", tf32=data["builder_flags"]["TF32"])


def make_build_config(package_dir: str | Path, batch: Sequence[str] | None = None,
                      opt_level: int = DEFAULT_OPT_LEVEL, workspace_mb: int | None = None,
                      timing_cache: str | Path | None = None, detailed_profile: bool = False,
                      tf32: bool = False) -> EngineBuildConfig:
    """The build configuration for the package in `package_dir` from the command's options, validated."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    if not 0 <= opt_level <= 5:
        raise BuildConfigError(f"--opt-level {opt_level}: TensorRT's builder optimization level is 0..5")
    if workspace_mb is not None and workspace_mb < 1:
        raise BuildConfigError(f"--workspace-mb {workspace_mb}: must be at least 1")
    if timing_cache is not None and _is_inside(Path(timing_cache), package_dir):
        raise BuildConfigError(f"--timing-cache {timing_cache}: keep the cache outside the package "
                               "(verify rejects files the manifest does not list)")
    return EngineBuildConfig(
        graph=manifest.graphs[STEP_GRAPH].path,
        profiles=tuple(make_profiles(manifest, parse_batch_ranges(batch))),
        builder_optimization_level=opt_level,
        workspace_bytes=None if workspace_mb is None else workspace_mb * 2**20,
        timing_cache=None if timing_cache is None else str(timing_cache),
        detailed_profiling=detailed_profile,
        tf32=tf32,
    )


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
