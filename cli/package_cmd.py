"""The `rwkv-deploy package` and `rwkv-deploy verify` commands: thin wrappers over export.archive/triton/verify."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rwkv_deploy.errors import RwkvDeployError

from .errors import one_line_errors
from .extras import require_modules


class PackageUsageError(RwkvDeployError):
    exit_code = 2


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise PackageUsageError(f"--triton-preferred-batch-sizes {text!r}: expected whole numbers separated by "
                                "commas, e.g. 4,8") from None


def package_cmd(
    package_dir: Path = typer.Argument(..., help="package directory written by `rwkv-deploy export`"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="archive file to write, e.g. model.zip"),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Triton model repository directory to write"),
    force: bool = typer.Option(False, "--force", help="replace an existing archive / non-empty Triton directory"),
    triton_name: Optional[str] = typer.Option(None, help="Triton model name (default: the package folder's name)"),
    triton_max_batch_size: int = typer.Option(8, help="Triton max_batch_size (sequences stepped together)"),
    triton_preferred_batch_sizes: str = typer.Option("4,8", help="batch sizes the batcher waits for, e.g. 4,8"),
    triton_max_queue_delay_us: int = typer.Option(500, help="longest wait for a preferred batch size, microseconds"),
    triton_max_sequences: int = typer.Option(32, help="live sequences per model instance (more wait in a backlog)"),
    triton_sequence_idle_s: float = typer.Option(30.0, help="a sequence idle this long is ended, seconds"),
) -> None:
    """Pack a verified package directory into one reproducible zip archive (-o) and/or a Triton Inference
    Server model repository (--triton)."""
    if out is None and triton is None:
        raise PackageUsageError("package: give -o FILE (archive), --triton DIR (Triton repository), or both")
    batching = None
    if triton is not None:
        from rwkv_deploy.export.triton import BatchingOptions

        batching = BatchingOptions(triton_max_batch_size, _sizes(triton_preferred_batch_sizes),
                                   triton_max_queue_delay_us, triton_max_sequences,
                                   max(1, round(triton_sequence_idle_s * 1e6)))
    if out is not None:
        from rwkv_deploy.package.archive import create_archive

        members = create_archive(package_dir, out, force=force)
        total = sum(m.size for m in members)
        typer.echo(f"wrote {out} ({len(members)} files and the PACKAGE.json index, {total / 2**20:.1f} MiB)")
    if triton is not None:
        require_modules("package --triton", "onnx")
        from rwkv_deploy.export.triton import write_repository

        repo = write_repository(package_dir, triton, name=triton_name, batching=batching, force=force)
        typer.echo(f"wrote Triton model repository {triton} (models: {', '.join(repo.models)}; "
                   f"serve with: tritonserver --model-repository {triton})")


def verify_cmd(
    path: Path = typer.Argument(..., help="package directory or archive"),
) -> None:
    """Check a package: file hashes, archive index, no stray files, manifest against the ONNX graph.

    Prints one line per problem, then OK or FAILED; exits 1 when there are problems."""
    from rwkv_deploy.package.verify import graph_checks_available, verify_package

    problems = verify_package(path)
    for problem in problems:
        typer.echo(problem)
    if not graph_checks_available():
        typer.echo('note: the graphs\' inputs and outputs were not checked against the manifest (that needs onnx: '
                   'pip install "rwkv-deploy[export]")', err=True)
    if problems:
        typer.echo(f"FAILED: {path} ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
        raise typer.Exit(1)
    typer.echo(f"OK: {path}")


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("package")(one_line_errors(package_cmd))
    app.command("verify")(one_line_errors(verify_cmd))
