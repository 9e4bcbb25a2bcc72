"""The `rwkv-deploy package` and `rwkv-deploy verify` commands: thin wrappers over export.archive/verify."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import one_line_errors


def package_cmd(
    package_dir: Path = typer.Argument(..., help="package directory written by `rwkv-deploy export`"),
    out: Path = typer.Option(..., "--out", "-o", help="archive file to write, e.g. model.zip"),
    force: bool = typer.Option(False, "--force", help="replace an existing archive"),
) -> None:
    """Pack a verified package directory into one reproducible zip archive (indexed by PACKAGE.json)."""
    from rwkv_deploy.export.archive import create_archive

    members = create_archive(package_dir, out, force=force)
    total = sum(m.size for m in members)
    typer.echo(f"wrote {out} ({len(members)} files and the PACKAGE.json index, {total / 2**20:.1f} MiB)")


def verify_cmd(
    path: Path = typer.Argument(..., help="package directory or archive"),
) -> None:
    """Check a package: file hashes, archive index, no stray files, manifest against the ONNX graph.

    Prints one line per problem, then OK or FAILED; exits 1 when there are problems."""
    from rwkv_deploy.export.verify import verify_package

    problems = verify_package(path)
    for problem in problems:
        typer.echo(problem)
    if problems:
        typer.echo(f"FAILED: {path} ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
        raise typer.Exit(1)
    typer.echo(f"OK: {path}")


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("package")(one_line_errors(package_cmd))
    app.command("verify")(one_line_errors(verify_cmd))
