"""The `rwkv-deploy package` and `rwkv-deploy verify` commands: thin wrappers over export.archive/triton/verify."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from rwkv_deploy.errors import RefusedError

from .errors import one_line_errors, printable
from .extras import require_targets_extra


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise RefusedError(f"--triton-preferred-batch-sizes {text!r}: expected whole numbers separated by "
                                "commas, e.g. 4,8") from None


def _idle_us(seconds: float) -> int:
    if not math.isfinite(seconds) or seconds <= 0 or seconds * 1e6 >= 2**63:
        raise RefusedError(f"--triton-idle-timeout {seconds:g}: expected a positive number of seconds")
    return max(1, round(seconds * 1e6))


def _given(**options):
    """The options the user gave (not None); the library's dataclasses hold the defaults."""
    return {name: value for name, value in options.items() if value is not None}


def package_cmd(
    package_dir: Path = typer.Argument(..., help="package directory written by `rwkv-deploy export`"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="archive file to write, e.g. model.zip"),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Triton model repository directory to write"),
    genai: Optional[Path] = typer.Option(None, "--genai", help="ONNX Runtime GenAI model folder to write (for C, "
                                         "C++ and C# applications; needs a package exported with --prefill)"),
    force: bool = typer.Option(False, "--force", help="replace an existing archive / non-empty Triton directory"),
    triton_name: Optional[str] = typer.Option(None, help="Triton model name (default: the package folder's name)"),
    instances: Optional[int] = typer.Option(None, "--triton-instances", "--instances",
                                            help="model instances (instance_group count, default 1)"),
    kind: Optional[str] = typer.Option(None, "--triton-kind", "--kind",
                                       help="cpu | gpu: where the ONNX model's instances run (default cpu)"),
    intra_op_threads: Optional[int] = typer.Option(None, "--triton-intra-op-threads", "--intra-op-threads",
                                                   help="ONNX Runtime intra-op threads per instance, 0 for ONNX "
                                                   "Runtime's default (default: 1 on cpu, 0 on gpu)"),
    inter_op_threads: Optional[int] = typer.Option(None, "--triton-inter-op-threads", "--inter-op-threads",
                                                   help="ONNX Runtime inter-op threads per instance, 0 for ONNX "
                                                   "Runtime's default (default: 1 on cpu, 0 on gpu)"),
    max_batch_size: Optional[int] = typer.Option(None, "--triton-max-batch-size",
                                                 help="max_batch_size: sequences stepped together (default 8)"),
    preferred_batch_sizes: Optional[str] = typer.Option(None, "--triton-preferred-batch-sizes",
                                                        help="batch sizes the batcher waits for (default 4,8)"),
    max_queue_delay_us: Optional[int] = typer.Option(None, "--triton-max-queue-delay-us",
                                                     help="longest wait for a preferred batch size, microseconds "
                                                     "(default 500)"),
    max_sequences: Optional[int] = typer.Option(None, "--triton-max-sequences", "--max-sequences",
                                                help="live sequences per model instance; more wait in a backlog "
                                                "(default 32)"),
    idle_timeout_s: Optional[float] = typer.Option(None, "--triton-idle-timeout", "--idle-timeout",
                                                   help="a sequence idle this long is ended and its state "
                                                   "dropped, seconds (default 30)"),
) -> None:
    """Pack a verified package directory into one reproducible zip archive (-o), a Triton Inference Server
    model repository (--triton) and/or an ONNX Runtime GenAI folder (--genai)."""
    if out is None and triton is None and genai is None:
        raise RefusedError("package: give -o FILE (archive), --triton DIR (Triton repository) and/or "
                                "--genai DIR (ONNX Runtime GenAI folder)")
    given = {"--triton-name": triton_name, "--triton-instances": instances, "--triton-kind": kind,
             "--triton-intra-op-threads": intra_op_threads, "--triton-inter-op-threads": inter_op_threads,
             "--triton-max-batch-size": max_batch_size, "--triton-preferred-batch-sizes": preferred_batch_sizes,
             "--triton-max-queue-delay-us": max_queue_delay_us, "--triton-max-sequences": max_sequences,
             "--triton-idle-timeout": idle_timeout_s}
    if triton is None:
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise RefusedError(f"{stray[0]}: a Triton option, given without --triton DIR")
    batching = instance_options = None
    if triton is not None:
        require_targets_extra("package --triton")  # before anything is written
        from rwkv_deploy.targets.triton import BatchingOptions, InstanceOptions

        batching = BatchingOptions(**_given(
            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, max_sequences=max_sequences,
            preferred_batch_sizes=_sizes(preferred_batch_sizes) if preferred_batch_sizes is not None else None,
            sequence_idle_us=_idle_us(idle_timeout_s) if idle_timeout_s is not None else None))
        instance_options = InstanceOptions(**_given(count=instances, kind=kind, intra_op_threads=intra_op_threads,
                                                    inter_op_threads=inter_op_threads))
    if out is not None:
        from rwkv_deploy.package.archive import create_archive

        members = create_archive(package_dir, out, force=force)
        total = sum(m.size for m in members)
        typer.echo(f"wrote {out} ({len(members)} files and the PACKAGE.json index, {total / 2**20:.1f} MiB)")
    if genai is not None:
        require_targets_extra("package --genai")
        from rwkv_deploy.targets.genai.folder import write_genai_folder

        folder = write_genai_folder(package_dir, genai, force=force)
        typer.echo(f"wrote ONNX Runtime GenAI folder {genai} ({', '.join(folder.files)})")
    if triton is not None:
        from rwkv_deploy.targets.triton import write_repository

        repo = write_repository(package_dir, triton, name=triton_name, batching=batching, force=force,
                                instances=instance_options)
        typer.echo(f"wrote Triton model repository {triton} (models: {', '.join(repo.models)}; "
                   f"test it with: scripts/triton_server.sh {triton} --http-port 8000 --grpc-port 8001)")


def verify_cmd(
    path: Path = typer.Argument(..., help="package directory or archive"),
) -> None:
    """Check a package: file hashes, archive index, no stray files, manifest against the ONNX graph.

    Prints one line per problem, then OK or FAILED; exits 1 when there are problems."""
    from rwkv_deploy.package.verify import graph_checks_available, verify_package

    problems = verify_package(path)
    for problem in problems:
        typer.echo(printable(problem))
    if not graph_checks_available():
        typer.echo('note: the graphs\' inputs and outputs were not checked against the manifest (that needs onnx: '
                   'pip install "rwkv-deploy[export]")', err=True)
    if problems:
        typer.echo(printable(f"FAILED: {path} ({len(problems)} problem{'s' if len(problems) > 1 else ''})"))
        raise typer.Exit(1)
    typer.echo(printable(f"OK: {path}"))


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("package")(one_line_errors(package_cmd))
    app.command("verify")(one_line_errors(verify_cmd))
