"""The TensorRT commands: `check-trt` (runs anywhere) and `build-engine` (needs TensorRT and a GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .errors import one_line_errors
from .extras import require_modules


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("check-trt")(check_trt_cmd)
    app.command("build-engine")(build_engine_cmd)


@one_line_errors
def check_trt_cmd(
    package_dir: Path = typer.Argument(..., metavar="PACKAGE", help="package directory or archive"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Lint the package's ONNX graph for TensorRT's ONNX parser; exits 1 on any error-level finding."""
    require_modules("check-trt", "onnx")
    from rwkv_deploy.export.tensorrt.lint import format_report, lint_package
    from rwkv_deploy.runtime.package import package_directory

    with package_directory(package_dir) as directory:
        report = lint_package(directory)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if report.errors:
        raise typer.Exit(1)


@one_line_errors
def build_engine_cmd(
    package_dir: Path = typer.Argument(..., metavar="DIR", help="package directory (the engine is added to it)"),
    batch: Optional[List[str]] = typer.Option(
        None, "--batch", metavar="MIN:OPT:MAX",
        help="batch sizes of one optimization profile (repeatable: one profile each; default 1:1:8)"),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="reuse and update this timing cache file (outside the package)"),
    opt_level: int = typer.Option(3, "--opt-level", help="builder optimization level 0..5"),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="workspace memory limit (default: TensorRT's)"),
    detailed_profile: bool = typer.Option(False, "--detailed-profile", help="DETAILED profiling verbosity"),
    tf32: bool = typer.Option(False, "--tf32", help="allow TF32 matrix math (off: fp32 stays fp32)"),
) -> None:
    """Build a strongly typed TensorRT engine from the package's graph: writes engine.plan and engine.json
    into the package and lists both in manifest.json. Exit 2 without TensorRT or a GPU."""
    require_modules("build-engine", "onnx")
    from rwkv_deploy.export.tensorrt.build_config import make_build_config
    from rwkv_deploy.export.tensorrt.builder import build_engine

    config = make_build_config(package_dir, batch, opt_level=opt_level, workspace_mb=workspace_mb,
                               timing_cache=timing_cache, detailed_profile=detailed_profile, tf32=tf32)
    built = build_engine(package_dir, config)
    record = built.record
    ranges = ", ".join(str(b) for b in (p.batch for p in config.profiles))
    typer.echo(f"wrote {built.plan_path} ({record['plan_bytes'] / 2**20:.1f} MiB, TensorRT {record['tensorrt_version']}, "
               f"{record['gpu']['name']} sm_{record['gpu']['compute_capability'].replace('.', '')}, "
               f"batch {ranges}, {record['build_seconds']:.0f} s)")
