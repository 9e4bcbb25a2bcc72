"""The `rwkv-deploy` command: thin wrappers over the library, no logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rwkv_deploy.export.options import PRECISIONS, ExportOptions
from rwkv_deploy.package.names import PREFILL_LOGITS

from .bench_cmd import register as _register_bench
from .bench_serve_cmd import register as _register_bench_serve
from .bench_triton_cmd import register as _register_bench_triton
from .convert_cmd import register as _register_convert
from .cpu_cmd import register as _register_cpu
from .errors import one_line_errors
from .extras import MAX_PARAMS_HELP, raise_param_cap, require_export_extra, require_modules
from .generate_cmd import register as _register_generate
from .package_cmd import register as _register_package
from .serve_cmd import register as _register_serve
from .tensorrt_cmd import register as _register_tensorrt
from .validate_cmd import register as _register_validate

DEFAULTS = ExportOptions()

_COMMAND_MODULES = (_register_generate, _register_validate, _register_package, _register_tensorrt, _register_cpu,
                    _register_bench, _register_bench_triton, _register_convert, _register_serve, _register_bench_serve)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export RWKV checkpoints to ONNX / TensorRT and run them without PyTorch.")


def _default_checkpoint() -> Path:
    from rwkv_deploy.models.bundled import bundled_checkpoint

    return bundled_checkpoint()


@app.command("inspect")
@one_line_errors
def inspect_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint file or HF directory (default: the bundled model)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ln_x_eps: Optional[float] = typer.Option(None, help="override the v5+ ln_x GroupNorm epsilon"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Print version, sizes, parameter count, stored dtype and recurrent-state bytes of a checkpoint."""
    require_modules("inspect", "torch")
    raise_param_cap(max_params)
    from rwkv_deploy.models.inspection import format_summary, summarize_checkpoint

    overrides = {"ln_x_eps": ln_x_eps} if ln_x_eps is not None else {}
    summary = summarize_checkpoint(checkpoint or _default_checkpoint(), **overrides)
    typer.echo(json.dumps(summary.to_dict()) if as_json else format_summary(summary))


@app.command("export")
@one_line_errors
def export_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint (default: the bundled model)"),
    out: Path = typer.Option(..., "--out", "-o", help="package directory to create"),
    precision: str = typer.Option(DEFAULTS.precision, help=" | ".join(PRECISIONS)),
    opset: int = typer.Option(DEFAULTS.opset, help="ONNX opset"),
    tokenizer: Optional[str] = typer.Option(None, help="world | bytes | none | path to tokenizer.json (default: from vocab size)"),
    external_data: bool = typer.Option(False, "--external-data", help="store weights in a separate .data file"),
    force: bool = typer.Option(False, "--force", help="replace an existing package directory (never a file, an "
                               "input, the current directory or a folder that is not a package)"),
    prefill: bool = typer.Option(False, "--prefill", help="also export the time-parallel prefill graph "
                                 "(tokens \\[batch, T] in one call; weights stored once for both graphs)"),
    prefill_logits: str = typer.Option(DEFAULTS.prefill_logits, "--prefill-logits",
                                       help=f"prefill graph output: {' | '.join(PREFILL_LOGITS)} positions"),
    ln_x_eps: Optional[float] = typer.Option(None, "--ln-x-eps", help="v5+ ln_x GroupNorm epsilon (default "
                                             "BlinkDL's 64e-5; 1e-5 reproduces rwkv.cpp's v5)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Export a checkpoint's single-step graph (and optionally its prefill graph) to ONNX as a deployment package."""
    require_export_extra("export")
    raise_param_cap(max_params)
    from rwkv_deploy.export.package_builder import export_package
    from rwkv_deploy.package.names import PREFILL_GRAPH, STEP_GRAPH
    from .progress import stage_printer

    options = ExportOptions(precision=precision, opset=opset, tokenizer=tokenizer,
                            external_data=True if external_data else None, force=force, prefill=prefill,
                            prefill_logits=prefill_logits, ln_x_eps=ln_x_eps)
    with stage_printer(enabled=not quiet) as progress:
        manifest = export_package(checkpoint or _default_checkpoint(), out, options, progress=progress)
    graph = manifest.graphs[STEP_GRAPH]
    extra = f" and {manifest.graphs[PREFILL_GRAPH].path}" if PREFILL_GRAPH in manifest.graphs else ""
    typer.echo(f"wrote {out}/{graph.path}{extra} (RWKV-{manifest.model.version}, {graph.precision}, "
               f"{len(manifest.state)} state tensors, tokenizer {manifest.tokenizer.kind})")


@app.command("version")
def version_cmd() -> None:
    """Print the rwkv-deploy version."""
    from rwkv_deploy import __version__

    typer.echo(__version__)


for _register in _COMMAND_MODULES:
    _register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
