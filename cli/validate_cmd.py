"""The `rwkv-deploy validate` command: compare a package with its PyTorch reference and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rwkv_deploy.validate.result import ValidateOptions

from .errors import one_line_errors
from .extras import MAX_PARAMS_HELP, raise_param_cap, require_export_extra

DEFAULTS = ValidateOptions()


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("validate")(validate_cmd)


@one_line_errors
def validate_cmd(
    package: Path = typer.Argument(..., help="package directory written by `rwkv-deploy export`"),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="the checkpoint the package was exported from"),
    steps: int = typer.Option(DEFAULTS.steps, help="tokens fed to each sequence, one step at a time"),
    batch: int = typer.Option(DEFAULTS.batch, help="sequences run at once"),
    seed: int = typer.Option(DEFAULTS.seed, help="seed of the random-token stream"),
    greedy_tokens: int = typer.Option(DEFAULTS.greedy_tokens, help="tokens each side greedy-decodes on its own"),
    out: Optional[Path] = typer.Option(None, "--report-dir", "--out", "-o",
                                       help="report folder, written fresh (default: PACKAGE/validation)"),
    threads: Optional[int] = typer.Option(None, min=1, help="threads for the PyTorch reference and for ONNX Runtime "
                                          "(default: each library's own)"),
    skip_hash_check: bool = typer.Option(False, "--no-verify", "--skip-hash-check",
                                         help="skip hashing the package's files (never the path rules)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    backend: str = typer.Option(DEFAULTS.backend, "--backend",
                                help="what runs the artifact: onnxruntime, or tensorrt (the package's built engine)"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Run the reference (PyTorch fp32) and the artifact (ONNX Runtime or TensorRT) on the same tokens; exit 1 if not faithful."""
    require_export_extra("validate")
    raise_param_cap(max_params)
    from rwkv_deploy.validate import ThresholdsNotMet, validate_package, write_report
    from rwkv_deploy.package.names import VALIDATION_DIR
    from rwkv_deploy.validate.report import check_report_target
    from .progress import stage_printer

    report_dir = out or package / VALIDATION_DIR.rstrip("/")
    check_report_target(report_dir)  # before minutes of validation, not after
    options = ValidateOptions(steps=steps, batch=batch, seed=seed, greedy_tokens=greedy_tokens,
                              check_hashes=not skip_hash_check, threads=threads, backend=backend)
    with stage_printer(enabled=not quiet) as progress:
        result = validate_package(package, checkpoint, options, progress=progress)
        progress("writing the report")
        files = write_report(result, report_dir)
    typer.echo(result.summary_line())
    for check in result.failures:
        typer.echo(f"  failed: {check.describe()}")
    typer.echo(f"report: {files.markdown}\n        {files.json}\n        {files.plot}")
    if not result.passed:
        names = ", ".join(dict.fromkeys(c.metric for c in result.failures))
        raise ThresholdsNotMet(f"validation FAILED ({names}); see {files.markdown}")
