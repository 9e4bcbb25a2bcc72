"""The `rwkv-deploy convert` command: a checkpoint to a BlinkDL .pth or a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import one_line_errors
from .extras import MAX_PARAMS_HELP, raise_param_cap, require_modules


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("convert")(convert_cmd)


@one_line_errors
def convert_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint file or Hugging Face folder, any format `inspect` reads"),
    out: Path = typer.Argument(..., help="the .pth file or Hugging Face folder to write"),
    to: str = typer.Option(..., "--to", help="pth (BlinkDL state dict) or hf (the version's Hugging Face layout, "
                                             "which llama.cpp's converter reads)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output (a .pth, or an HF folder)"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Write CHECKPOINT in another format; the result is read back and must load as the same model."""
    require_modules("convert", "torch", "safetensors")
    raise_param_cap(max_params)
    from rwkv_deploy.models.convert import convert_checkpoint

    result = convert_checkpoint(checkpoint, to, out, force=force, max_params=max_params)
    typer.echo(f"wrote {result.out} (RWKV-{result.version}, {result.format}, {result.tensors} tensors, from "
               f"{result.source_format}); read back: the same model")
