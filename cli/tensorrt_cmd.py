"""The TensorRT commands: `check-trt` (runs anywhere) and `build-engine` (TensorRT for RTX: anywhere; full
TensorRT: on the GPU it builds for)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .errors import one_line_errors
from .extras import require_targets_extra

TRT_HELP = "auto (full TensorRT when installed, else TensorRT for RTX), tensorrt or rtx"


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("check-trt")(check_trt_cmd)
    app.command("build-engine")(build_engine_cmd)


@one_line_errors
def check_trt_cmd(
    package_dir: Path = typer.Argument(..., metavar="PACKAGE", help="package directory or archive"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    trt: str = typer.Option("auto", "--trt", help=f"the TensorRT to lint for: {TRT_HELP}"),
    compute_capability: Optional[List[str]] = typer.Option(
        None, "--compute-capability", metavar="X.Y", help="RTX build target to lint for (repeatable)"),
) -> None:
    """Lint every graph of the package for TensorRT's ONNX parser and builder, and for rwkv-deploy's numerics
    policy; exits 1 on any error- or policy-level finding."""
    require_targets_extra("check-trt")
    from rwkv_deploy.targets.tensorrt.lint import format_report, lint_package
    from rwkv_deploy.runtime.package import package_directory

    flavour = _lint_flavour(trt)
    targets = _targets_for_lint(compute_capability or [])
    with package_directory(package_dir) as directory:
        report = lint_package(directory, flavour=flavour, targets=targets)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if report.errors:
        raise typer.Exit(1)


def _lint_flavour(choice: str) -> str:
    """The flavour `--trt` names; auto: the one build-engine would use here (RTX when neither is installed)."""
    from rwkv_deploy.tensorrt_library import CHOICES, TENSORRT, TENSORRT_RTX, TensorRTUnavailable, import_flavour

    if choice not in CHOICES:
        raise TensorRTUnavailable(f"--trt {choice}: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return TENSORRT if import_flavour(TENSORRT)[0] is not None else TENSORRT_RTX
    return CHOICES[choice][0]


def _targets_for_lint(texts: list[str]) -> tuple[str, ...]:
    from rwkv_deploy.targets.tensorrt.targets import parse_capability

    return tuple(dict.fromkeys(parse_capability(t) for t in texts))


@one_line_errors
def build_engine_cmd(
    package_dir: Path = typer.Argument(..., metavar="DIR", help="package directory (the engines are added to it)"),
    trt: str = typer.Option("auto", "--trt", help=f"which TensorRT builds: {TRT_HELP}"),
    graph: str = typer.Option("all", "--graph", help="step, prefill, or all (every graph the package has)"),
    batch: Optional[List[str]] = typer.Option(
        None, "--batch", metavar="MIN:OPT:MAX",
        help="batch sizes of one optimization profile (repeatable: one profile each; default 1:1:8)"),
    tokens: Optional[str] = typer.Option(
        None, "--tokens", metavar="MIN:OPT:MAX", help="prefill length T range of every prefill profile "
        "(default 1:64:512)"),
    compute_capability: Optional[List[str]] = typer.Option(
        None, "--compute-capability", metavar="X.Y", help="RTX: a GPU compute capability to build for "
        "(repeatable; default: the library's portable set)"),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="full TensorRT: reuse and update this timing cache file (outside the package)"),
    opt_level: int = typer.Option(3, "--opt-level", help="builder optimization level 0..5"),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="workspace memory limit (default: TensorRT's)"),
    detailed_profile: bool = typer.Option(False, "--detailed-profile", help="DETAILED profiling verbosity"),
    tf32: bool = typer.Option(False, "--tf32", help="allow TF32 matrix math (off: fp32 stays fp32)"),
) -> None:
    """Build strongly typed TensorRT engines from the package's graphs: writes engines/<graph>.plan and .json
    into the package and lists them in manifest.json. Exit 2 without a usable TensorRT."""
    require_targets_extra("build-engine")
    from rwkv_deploy.targets.tensorrt.build_config import make_build_configs
    from rwkv_deploy.targets.tensorrt.builder import build_engines
    from rwkv_deploy.targets.tensorrt.targets import rtx_targets
    from rwkv_deploy.package.profiles import parse_batch_ranges, parse_token_range
    from rwkv_deploy.tensorrt_library import TENSORRT_RTX, require_library_for_build

    parse_batch_ranges(batch), parse_token_range(tokens)  # bad ranges: one line, before looking for TensorRT
    library, gpu = require_library_for_build(trt)
    targets = rtx_targets(library.module, compute_capability) if compute_capability and \
        library.flavour == TENSORRT_RTX else tuple(compute_capability or ())
    configs = make_build_configs(package_dir, library.flavour, graph, batch, tokens, targets, opt_level=opt_level,
                                 workspace_mb=workspace_mb, timing_cache=timing_cache,
                                 detailed_profile=detailed_profile, tf32=tf32)
    for built in build_engines(package_dir, configs, library, gpu):
        record = built.record
        ranges = ", ".join(f"{p['batch']['min']}:{p['batch']['opt']}:{p['batch']['max']}"
                           for p in record["build_config"]["profiles"])
        on = f"built on {gpu.name}" if gpu else "built without a GPU"
        targets_text = ", ".join(record["targets"]) or "the library's default"
        typer.echo(f"wrote {built.plan_path} ({record['plan_bytes'] / 2**20:.1f} MiB, {library.name} "
                   f"{library.version}, for compute capability {targets_text}, {on}, batch {ranges}, "
                   f"{record['build_seconds']:.1f} s)")
