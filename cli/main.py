"""The `rwkv-deploy` command: thin wrappers over the library, no logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .errors import one_line_errors

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
) -> None:
    """Print version, sizes, parameter count, stored dtype and recurrent-state bytes of a checkpoint."""
    from rwkv_deploy.models.inspection import format_summary, summarize_checkpoint

    overrides = {"ln_x_eps": ln_x_eps} if ln_x_eps is not None else {}
    summary = summarize_checkpoint(checkpoint or _default_checkpoint(), **overrides)
    typer.echo(json.dumps(summary.to_dict()) if as_json else format_summary(summary))


@app.command("version")
def version_cmd() -> None:
    """Print the rwkv-deploy version."""
    from rwkv_deploy import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
