"""The `rwkv-deploy bench` command: thin wrapper over rwkv_deploy.bench."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .errors import one_line_errors
from .extras import MAX_PARAMS_HELP, raise_param_cap, require_export_extra


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("bench")(bench_cmd)


def _ints(text: str, option: str) -> tuple[int, ...]:
    from rwkv_deploy.bench.run import BenchError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if any(v < 1 for v in values):
        raise BenchError(f"{option} {text!r}: every value must be at least 1")
    return values


@one_line_errors
def bench_cmd(
    packages: Optional[List[Path]] = typer.Argument(None, help="package directories to measure (or use --shape)"),
    shape: Optional[str] = typer.Option(None, "--shape", help="VERSION:LAYERS:WIDTH:VOCAB[:HEAD], random weights, "
                                        "e.g. 7:12:768:65536 (RWKV-7 at the G1 0.1B size)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="the packages' checkpoint, for the baselines"),
    precisions: str = typer.Option("fp32,fp16,int8,int4", help="with --shape: precisions to export and measure"),
    batches: str = typer.Option("1,4,16", help="decode batch sizes"),
    prefill: str = typer.Option("64,512", "--prefill", help="prefill lengths T"),
    contexts: str = typer.Option("1024,4096,16384", help="context lengths for the per-token cost ('' to skip)"),
    baselines: str = typer.Option("torch-reference,rwkv-package", help="baselines measured in the same run ('' for none)"),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | tensorrt"),
    threads: Optional[int] = typer.Option(None, help="threads for every engine (default: all cores)"),
    min_seconds: float = typer.Option(3.0, "--min-seconds", help="least timed seconds per measurement"),
    work_dir: Path = typer.Option(Path(".bench-cache"), "--work-dir", help="cache for random checkpoints, packages, states"),
    out: Path = typer.Option(Path("bench-out"), "--out", "-o", help="writes bench.json, bench.md, bench.png here"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result on stdout (progress goes to stderr)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Measure decode, prefill and long-context speed of packages against the PyTorch reference and the rwkv
    package, in one run; ratios against the issue-5 targets."""
    raise_param_cap(max_params)
    from rwkv_deploy.bench.report import markdown, write_chart
    from rwkv_deploy.bench.run import BASELINES, BenchError, BenchOptions, run_bench
    from rwkv_deploy.bench.shapes import parse_shape
    from rwkv_deploy.fileio import write_bytes_atomically
    from .progress import stage_printer

    chosen = tuple(b for b in baselines.split(",") if b.strip())
    unknown = [b for b in chosen if b not in BASELINES]
    if unknown:
        raise BenchError(f"--baselines: unknown {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    options = BenchOptions(
        shape=parse_shape(shape) if shape else None, packages=tuple(packages or ()), checkpoint=checkpoint,
        precisions=tuple(p for p in precisions.split(",") if p.strip()), batches=_ints(batches, "--batches"),
        prefill_lengths=_ints(prefill, "--prefill"), contexts=_ints(contexts, "--contexts"), baselines=chosen,
        backend=backend, min_seconds=min_seconds, work_dir=work_dir,
        **({"threads": threads} if threads else {}))
    with stage_printer(enabled=not quiet) as progress:  # progress goes to stderr
        result = run_bench(options, progress, export=_export_for_bench if options.shape else None)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(out / "bench.json", result.to_json().encode())
        write_bytes_atomically(out / "bench.md", markdown(result).encode())
        write_chart(result, out / "bench.png")
    if as_json:
        typer.echo(result.to_json(), nl=False)
    else:
        typer.echo(markdown(result), nl=False)
        typer.echo(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")


def _export_for_bench(checkpoint: Path, out: Path, precision: str) -> None:
    """What `bench --shape` measures: the step and prefill graphs at `precision`, no tokenizer."""
    require_export_extra("bench --shape")
    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    export_package(checkpoint, out, ExportOptions(precision=precision, tokenizer="none", prefill=True, force=True))
