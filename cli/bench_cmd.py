"""The `rwkv-deploy bench` command: thin wrapper over rwkv_deploy.bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from rwkv_deploy.bench.options import BACKENDS, DEFAULTS, BenchOptions

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


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _joined(values: tuple) -> str:
    return ",".join(str(v) for v in values)


@one_line_errors
def bench_cmd(
    packages: Optional[List[Path]] = typer.Argument(None, help="package directories to measure (or use --shape)"),
    shape: Optional[str] = typer.Option(None, "--shape", help="VERSION:LAYERS:WIDTH:VOCAB[:HEAD], random weights, "
                                        "e.g. 7:12:768:65536 (RWKV-7 at the G1 0.1B size)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="the packages' checkpoint, for the baselines and fidelity"),
    precisions: str = typer.Option(_joined(DEFAULTS.precisions), help="with --shape: precisions to export and measure"),
    batches: str = typer.Option(_joined(DEFAULTS.batches), help="decode batch sizes"),
    prefill: str = typer.Option(_joined(DEFAULTS.prefill_lengths), "--prefill", help="prefill lengths T"),
    contexts: str = typer.Option(_joined(DEFAULTS.contexts), help="context lengths for the per-token cost ('' to skip)"),
    baselines: str = typer.Option(_joined(DEFAULTS.baselines), help="baselines measured in the same run ('' for none; "
                                  "also: llama.cpp, whose first run builds it)"),
    rwkvcpp_precisions: str = typer.Option(_joined(DEFAULTS.rwkvcpp_precisions), "--rwkvcpp-precisions",
                                           help="rwkv.cpp's formats to measure"),
    rwkvcpp_lib: Optional[Path] = typer.Option(DEFAULTS.rwkvcpp_lib, "--rwkvcpp-lib",
                                               help="a built librwkv.so (default: built once into --work-dir)"),
    rwkvcpp_source: Optional[Path] = typer.Option(DEFAULTS.rwkvcpp_source, "--rwkvcpp-source",
                                                  help="rwkv.cpp's source archive or tree (default: the "
                                                  "sources vendored beside this checkout, if any)"),
    llamacpp_precisions: str = typer.Option(_joined(DEFAULTS.llamacpp_precisions), "--llamacpp-precisions",
                                            help="llama.cpp's GGUF types to measure (F32, F16, Q8_0 from its "
                                            "converter; Q4_0, Q4_K_M, ... from its quantizer)"),
    llamacpp_lib: Optional[Path] = typer.Option(DEFAULTS.llamacpp_lib, "--llamacpp-lib",
                                                help="a folder holding a built libllama.so (default: built once "
                                                "into --work-dir)"),
    llamacpp_sdist: Optional[Path] = typer.Option(DEFAULTS.llamacpp_sdist, "--llamacpp-sdist",
                                                  help="the llama-cpp-python sdist whose llama.cpp is built and "
                                                  "whose converter and binding are used (default: .cache/ of the "
                                                  "repository, which make setup fills)"),
    backend: str = typer.Option(DEFAULTS.backend, "--backend", help=" | ".join(BACKENDS)),
    spin_wait: bool = typer.Option(DEFAULTS.spin_wait, "--spin-wait",
                                   help="also measure the packages with spin-waiting ONNX Runtime threads at each "
                                   "thread count above 1 (engine rwkv-deploy-spin, and rwkv-deploy-cpu-spin with "
                                   "--cpu-ops; decode batch 1), as rwkv.cpp's and llama.cpp's threads wait"),
    genai: bool = typer.Option(DEFAULTS.genai, "--genai", help="also measure each package's ONNX Runtime GenAI "
                               "folder (engine onnxruntime-genai: decode batch 1, prefill, fidelity), as a C, C++ or "
                               "C# application runs it"),
    cpu_ops: bool = typer.Option(DEFAULTS.cpu_ops, "--cpu-ops",
                                 help="also measure each package's CPU step graph (engine "
                                 "rwkv-deploy-cpu: the weight products on rwkv-deploy's CPU operators; decode, "
                                 "fidelity)"),
    threads: Optional[str] = typer.Option(None, help="thread counts, each measured in turn (default: 1 and all "
                                          "cores)"),
    rounds: int = typer.Option(DEFAULTS.rounds, help="rounds per measurement, engine order reversed each round"),
    min_seconds: float = typer.Option(DEFAULTS.min_seconds, "--min-seconds",
                                      help="least timed seconds per measurement (over all rounds)"),
    fidelity_tokens: int = typer.Option(DEFAULTS.fidelity_tokens, "--fidelity-tokens",
                                        help="length of the token stream for KL / top-1 against the fp32 reference "
                                        "(0: skip)"),
    work_dir: Path = typer.Option(DEFAULTS.work_dir, "--work-dir", help="cache for random checkpoints, packages, "
                                  "states, rwkv.cpp's and llama.cpp's builds and files"),
    out: Path = typer.Option(DEFAULTS.out, "--out", "-o", help="writes bench.json, bench.md, bench.png here"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result on stdout (progress goes to stderr)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    max_params: Optional[int] = typer.Option(None, "--max-params", help=MAX_PARAMS_HELP),
) -> None:
    """Measure decode, prefill and long-context speed of packages, with each engine's fidelity, against the PyTorch
    reference, the rwkv package, rwkv.cpp and llama.cpp, in one run; ratios against the project's targets."""
    raise_param_cap(max_params)
    from rwkv_deploy.bench.report import markdown, write_chart
    from rwkv_deploy.bench.run import run_bench
    from rwkv_deploy.bench.shapes import parse_shape
    from rwkv_deploy.fileio import write_bytes_atomically
    from .progress import stage_printer

    options = BenchOptions(
        shape=parse_shape(shape) if shape else None, packages=tuple(packages or ()), checkpoint=checkpoint,
        precisions=_names(precisions), batches=_ints(batches, "--batches"),
        prefill_lengths=_ints(prefill, "--prefill"), contexts=_ints(contexts, "--contexts"),
        baselines=_names(baselines), rwkvcpp_precisions=_names(rwkvcpp_precisions), rwkvcpp_lib=rwkvcpp_lib,
        rwkvcpp_source=rwkvcpp_source, llamacpp_precisions=_names(llamacpp_precisions), llamacpp_lib=llamacpp_lib,
        llamacpp_sdist=llamacpp_sdist, backend=backend, spin_wait=spin_wait, genai=genai, cpu_ops=cpu_ops, rounds=rounds, min_seconds=min_seconds,
        fidelity_tokens=fidelity_tokens, work_dir=work_dir, out=out,
        **({"threads": _ints(threads, "--threads")} if threads else {}))
    with stage_printer(enabled=not quiet) as progress:  # progress goes to stderr
        result = run_bench(options, progress, export=_export_for_bench if options.shape else None,
                           write_genai=_genai_for_bench, write_cpu_graph=_cpu_graph_for_bench)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(out / "bench.json", result.to_json().encode())
        write_bytes_atomically(out / "bench.md", markdown(result).encode())
        write_chart(result, out / "bench.png")
    if as_json:
        typer.echo(result.to_json(), nl=False)
    else:
        typer.echo(markdown(result), nl=False)
        typer.echo(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")


def _cpu_graph_for_bench(package: Path, out: Path) -> Any:
    """What `bench --cpu-ops` runs: the package's CPU graphs (targets.cpu), written afresh (CpuGraph: `prefill`
    names the CPU prefill graph when one was made)."""
    from rwkv_deploy.targets.cpu.graph_file import write_cpu_graph

    return write_cpu_graph(package, out)


def _genai_for_bench(package: Path, out: Path) -> None:
    """What `bench --genai` runs: the package's GenAI folder (`package --genai`), written afresh."""
    from rwkv_deploy.targets.genai.folder import write_genai_folder

    write_genai_folder(package, out, force=True)


def _export_for_bench(checkpoint: Path, out: Path, precision: str) -> None:
    """What `bench --shape` measures: the step and prefill graphs at `precision`, no tokenizer."""
    require_export_extra("bench --shape")
    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    export_package(checkpoint, out, ExportOptions(precision=precision, tokenizer="none", prefill=True, force=True))
