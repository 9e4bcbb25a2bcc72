"""Everything `build-engine` passes to the TensorRT builder, as plain data: one `EngineBuildConfig` per graph.

The builder (`builder.py`) only translates this into API calls, so what an engine was built with can be
tested without building and is recorded verbatim in the engine's record. There is no precision setting on
purpose: the network is strongly typed, so precision comes from the ONNX graph (TensorRT 11 and TensorRT for
RTX have no FP16/INT8 builder flags). TF32, the one math-mode flag left, is cleared unless asked for, so an
fp32 package gives a true fp32 engine (RTX turns it on by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.package.names import PREFILL_GRAPH, STEP_GRAPH
from rwkv_deploy.package.profiles import OptimizationProfile, make_profiles, parse_batch_ranges, parse_token_range
from rwkv_deploy.tensorrt_library import TENSORRT_RTX

DEFAULT_OPT_LEVEL = 3  # TensorRT's default; 0..5
NETWORK_FLAGS = ("STRONGLY_TYPED",)
GRAPH_CHOICES = (STEP_GRAPH, PREFILL_GRAPH, "all")  # --graph


class BuildConfigError(RefusedError, ValueError):
    """Engine build options out of range or not fitting the package."""


@dataclass(frozen=True)
class EngineBuildConfig:
    graph: str  # the ONNX file, relative to the package directory
    profiles: tuple[OptimizationProfile, ...]
    builder_optimization_level: int = DEFAULT_OPT_LEVEL
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: str | None = None  # read if present, written after the build (full TensorRT only)
    detailed_profiling: bool = False
    tf32: bool = False
    name: str = STEP_GRAPH  # the manifest's graph name: step or prefill
    targets: tuple[str, ...] = ()  # RTX compute capabilities ("8.6", ...); () = the library's default

    @property
    def profiling_verbosity(self) -> str:
        return "DETAILED" if self.detailed_profiling else "LAYER_NAMES_ONLY"

    def to_dict(self) -> dict[str, Any]:
        """The record written to the engine's JSON (`build_config`)."""
        return {
            "graph": self.name,
            "onnx": self.graph,
            "network_flags": list(NETWORK_FLAGS),
            "builder_flags": {"TF32": self.tf32},
            "memory_pool_limits": {"WORKSPACE": self.workspace_bytes},
            "builder_optimization_level": self.builder_optimization_level,
            "profiling_verbosity": self.profiling_verbosity,
            "timing_cache": self.timing_cache,
            "compute_capabilities": list(self.targets),
            "profiles": [p.to_dict() for p in self.profiles],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineBuildConfig":
        return cls(graph=data["onnx"], profiles=tuple(OptimizationProfile.from_dict(p) for p in data["profiles"]),
                   builder_optimization_level=data["builder_optimization_level"],
                   workspace_bytes=data["memory_pool_limits"]["WORKSPACE"], timing_cache=data["timing_cache"],
                   detailed_profiling=data["profiling_verbosity"] == "DETAILED", tf32=data["builder_flags"]["TF32"],
                   name=data.get("graph", STEP_GRAPH), targets=tuple(data.get("compute_capabilities", ())))


def make_build_configs(package_dir: str | Path, flavour: str, graphs: str = "all",
                       batch: Sequence[str] | None = None, tokens: str | None = None,
                       targets: Sequence[str] = (), opt_level: int = DEFAULT_OPT_LEVEL,
                       workspace_mb: int | None = None, timing_cache: str | Path | None = None,
                       detailed_profile: bool = False, tf32: bool = False) -> list[EngineBuildConfig]:
    """The build configuration of each graph `--graph` names (all: every graph the package has), validated
    against the package and the TensorRT `flavour` ("tensorrt" or "tensorrt_rtx") that will build them.
    `targets` are RTX compute capabilities, already checked against the library (`targets.rtx_targets`)."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    if graphs not in GRAPH_CHOICES:
        raise BuildConfigError(f"--graph {graphs}: expected one of {', '.join(GRAPH_CHOICES)}")
    if not 0 <= opt_level <= 5:
        raise BuildConfigError(f"--opt-level {opt_level}: TensorRT's builder optimization level is 0..5")
    if workspace_mb is not None and workspace_mb < 1:
        raise BuildConfigError(f"--workspace-mb {workspace_mb}: must be at least 1")
    if timing_cache is not None and flavour == TENSORRT_RTX:
        raise BuildConfigError(f"--timing-cache {timing_cache}: TensorRT for RTX has no timing cache (its timing-"
                               "cache calls are deprecated no-ops: it compiles kernels instead of timing them)")
    if timing_cache is not None and _is_inside(Path(timing_cache), package_dir):
        raise BuildConfigError(f"--timing-cache {timing_cache}: keep the cache outside the package "
                               "(verify rejects files the manifest does not list)")
    if targets and flavour != TENSORRT_RTX:
        raise BuildConfigError("--compute-capability is for TensorRT for RTX (--trt rtx); full TensorRT builds "
                               "for the GPU it runs on")
    names = [n for n in (STEP_GRAPH, PREFILL_GRAPH) if n in manifest.graphs] if graphs == "all" else [graphs]
    if PREFILL_GRAPH in names and PREFILL_GRAPH not in manifest.graphs:
        raise BuildConfigError(f"{package_dir}: --graph prefill: the package has no prefill graph "
                               "(re-export it with --prefill)")
    if tokens is not None and PREFILL_GRAPH not in names:
        raise BuildConfigError("--tokens sets the prefill graph's length range, and no prefill engine is built")
    ranges = parse_batch_ranges(batch)
    token_range = parse_token_range(tokens)
    return [EngineBuildConfig(
        graph=manifest.graphs[name].path,
        profiles=tuple(make_profiles(manifest, ranges, name, token_range)),
        builder_optimization_level=opt_level,
        workspace_bytes=None if workspace_mb is None else workspace_mb * 2**20,
        timing_cache=None if timing_cache is None else str(timing_cache),
        detailed_profiling=detailed_profile,
        tf32=tf32,
        name=name,
        targets=tuple(targets),
    ) for name in names]


def make_build_config(package_dir: str | Path, batch: Sequence[str] | None = None, **options: Any) -> EngineBuildConfig:
    """The step graph's configuration (full TensorRT's options): `make_build_configs(..., graphs="step")`."""
    flavour = options.pop("flavour", "tensorrt")
    return make_build_configs(package_dir, flavour, "step", batch, **options)[0]


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
