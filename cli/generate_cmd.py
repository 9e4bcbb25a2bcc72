"""The `rwkv-deploy generate` command: stream text from a package with ONNX Runtime or TensorRT (no PyTorch
for ONNX Runtime)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.runtime.backends import DEFAULT_BACKEND
from rwkv_deploy.runtime.sampling import SamplingParams

from .errors import one_line_errors


SAMPLING = SamplingParams()  # the library's defaults are the CLI's


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("generate")(generate_cmd)


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt from --prompt TEXT, --prompt - (stdin) or --prompt-file PATH: exactly one, valid UTF-8 (a
    byte-level model would take any bytes, but the tokenizers take text), at most limits.PROMPT_BYTES."""
    from rwkv_deploy import limits

    if (prompt is None) == (prompt_file is None):
        raise RefusedError("give the prompt with exactly one of --prompt TEXT, --prompt - (stdin) or --prompt-file PATH")
    if prompt is not None and prompt != "-":
        data, where = os.fsencode(prompt), "--prompt"  # argv bytes as the shell passed them
    else:
        where = "stdin" if prompt == "-" else str(prompt_file)
        try:
            if prompt == "-":
                data = sys.stdin.buffer.read(limits.PROMPT_BYTES + 1)
            else:
                with open(prompt_file, "rb") as f:  # a file, a pipe (<(cmd)) or a link: the user's own path
                    data = f.read(limits.PROMPT_BYTES + 1)
        except OSError as exc:
            raise RefusedError(f"{where}: cannot read the prompt ({exc.strerror or exc})") from None
        if len(data) > limits.PROMPT_BYTES:
            raise RefusedError(f"{where}: the prompt is larger than {limits.PROMPT_BYTES // limits.MIB} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RefusedError(f"{where}: the prompt is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


@one_line_errors
def generate_cmd(
    package_dir: Path = typer.Argument(..., metavar="PACKAGE",
                                       help="package directory (`rwkv-deploy export`) or archive (`rwkv-deploy package`)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="text to continue; '-' reads it from stdin"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="read the prompt from this file (UTF-8)"),
    max_tokens: int = typer.Option(100, "--max-tokens", "-n", help="most tokens to generate"),
    temperature: float = typer.Option(SAMPLING.temperature, help="0 = greedy"),
    top_p: float = typer.Option(SAMPLING.top_p, "--top-p", help="nucleus sampling: keep tokens up to this total probability"),
    top_k: int = typer.Option(SAMPLING.top_k, "--top-k", help="keep only the k most likely tokens (0 = all)"),
    presence_penalty: float = typer.Option(SAMPLING.presence_penalty, "--presence-penalty", help="subtract once from generated tokens"),
    frequency_penalty: float = typer.Option(SAMPLING.frequency_penalty, "--frequency-penalty", help="subtract per occurrence"),
    penalty_decay: float = typer.Option(SAMPLING.penalty_decay, "--penalty-decay", help="multiply the penalties' token "
                                        "counts by this each step, in (0, 1] (RWKV's alpha_decay; 1 = no decay)"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop before this text (repeatable)"),
    seed: Optional[int] = typer.Option(None, help="seed for reproducible sampling"),
    greedy: bool = typer.Option(False, "--greedy", help="always take the most likely token (temperature 0)"),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend",
                                help="onnxruntime, or tensorrt (needs `rwkv-deploy build-engine` first, TensorRT and a GPU)"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="tensorrt: replay each step as a captured CUDA graph"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="onnxruntime: intra-op threads (default: one "
                                          "per core)"),
    spin_wait: bool = typer.Option(False, "--spin-wait", help="onnxruntime: worker threads spin between ops instead "
                                   "of sleeping: faster on cores given to the model, slower on shared ones "
                                   "(docs/bench.md)"),
    cpu_graph: str = typer.Option("auto", "--cpu-graph", help="onnxruntime: the package's CPU graph (`rwkv-deploy "
                                  "build-cpu`): auto takes it on the CPU when this install built its operators, on "
                                  "insists, off runs the portable graph"),
    load_state: Optional[Path] = typer.Option(None, "--load-state", help="continue from this state file (written by "
                                              "--save-state, or a server's return_state) instead of a fresh state"),
    save_state: Optional[Path] = typer.Option(None, "--save-state", help="write the state after the prompt and the "
                                              "generated tokens to this file (continue with --load-state)"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip hashing the package's files (a trusted local "
                                   "package); the path rules are always checked"),
) -> None:
    """Generate text from a prompt, streaming it to stdout; a tokens/s summary goes to stderr."""
    from rwkv_deploy.runtime import DeploymentPackage, Generator, RecurrentState
    from rwkv_deploy.runtime.backends import cpu_options, make_backend
    from rwkv_deploy.runtime.package import package_directory

    text = read_prompt(prompt, prompt_file)
    if backend == "onnxruntime":
        import rwkv_deploy.runtime.onnx_backend  # noqa: F401  (loaded before an archive is extracted: a signal
        # during a native library's initialisation then leaves no extracted copy behind)
    with package_directory(package_dir) as directory:
        package = DeploymentPackage.open(directory, verify=not no_verify)
        if package.tokenizer is None:
            raise RefusedError(f"{package_dir}: the package has no tokenizer, so it cannot take a text prompt")
        if cuda_graphs and backend != "tensorrt":
            raise RefusedError("--cuda-graphs applies to --backend tensorrt only")
        if (threads is not None or spin_wait or cpu_graph == "on") and backend != "onnxruntime":
            raise RefusedError("--threads, --spin-wait and --cpu-graph on apply to --backend onnxruntime only")
        options = {"cuda_graphs": True} if cuda_graphs else cpu_options(backend, threads, spin_wait, cpu_graph)
        start = RecurrentState.load(load_state, package.manifest) if load_state is not None else None
        step_backend = make_backend(backend, package, **options)
        generator = Generator(step_backend, package.tokenizer)
        result = generator.generate(
            text, max_tokens, temperature=0.0 if greedy else temperature, top_p=top_p, top_k=top_k,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, stop_strings=stop or (),
            seed=seed, on_token=_write, state=start, penalty_decay=penalty_decay)
        if save_state is not None:
            result.state.save(save_state)
    _write("\n")
    stats = result.stats
    graph = ", CPU graph" if getattr(step_backend, "runs_cpu_graph", False) else ""
    print(f"[{stats.generated_tokens} tokens, {stats.decode_tokens_per_s:.1f} tokens/s{graph}]", file=sys.stderr)
