"""The `rwkv-deploy generate` command: stream text from a package with ONNX Runtime or TensorRT (no PyTorch
for ONNX Runtime)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.runtime.backends import DEFAULT_BACKEND

from .errors import one_line_errors


class NoTokenizerError(RwkvDeployError):
    exit_code = 2


class BackendOptionError(RwkvDeployError):
    exit_code = 2


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("generate")(generate_cmd)


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


@one_line_errors
def generate_cmd(
    package_dir: Path = typer.Argument(..., metavar="PACKAGE",
                                       help="package directory (`rwkv-deploy export`) or archive (`rwkv-deploy package`)"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="text to continue"),
    max_tokens: int = typer.Option(100, "--max-tokens", "-n", help="most tokens to generate"),
    temperature: float = typer.Option(1.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling: keep tokens up to this total probability"),
    top_k: int = typer.Option(0, "--top-k", help="keep only the k most likely tokens (0 = all)"),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="subtract once from generated tokens"),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="subtract per occurrence"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop before this text (repeatable)"),
    seed: Optional[int] = typer.Option(None, help="seed for reproducible sampling"),
    greedy: bool = typer.Option(False, "--greedy", help="always take the most likely token (temperature 0)"),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend",
                                help="onnxruntime, or tensorrt (needs `rwkv-deploy build-engine` first, TensorRT and a GPU)"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="tensorrt: replay each step as a captured CUDA graph"),
) -> None:
    """Generate text from a prompt, streaming it to stdout; a tokens/s summary goes to stderr."""
    from rwkv_deploy.runtime import DeploymentPackage, Generator
    from rwkv_deploy.runtime.backends import make_backend
    from rwkv_deploy.runtime.package import package_directory

    with package_directory(package_dir) as directory:
        package = DeploymentPackage.open(directory)
        if package.tokenizer is None:
            raise NoTokenizerError(f"{package_dir}: the package has no tokenizer, so it cannot take a text prompt")
        if cuda_graphs and backend != "tensorrt":
            raise BackendOptionError("--cuda-graphs applies to --backend tensorrt only")
        options = {"cuda_graphs": True} if cuda_graphs else {}
        generator = Generator(make_backend(backend, package, **options), package.tokenizer)
        result = generator.generate(
            prompt, max_tokens, temperature=0.0 if greedy else temperature, top_p=top_p, top_k=top_k,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, stop_strings=stop or (),
            seed=seed, on_token=_write)
    _write("\n")
    stats = result.stats
    print(f"[{stats.generated_tokens} tokens, {stats.decode_tokens_per_s:.1f} tokens/s]", file=sys.stderr)
