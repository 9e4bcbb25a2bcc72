"""The `rwkv-deploy bench-triton` command: thin wrapper over rwkv_deploy.bench.triton_load."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import one_line_errors


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("bench-triton")(bench_triton_cmd)


@one_line_errors
def bench_triton_cmd(
    url: str = typer.Argument(..., help="the server's gRPC endpoint, host:port (e.g. 127.0.0.1:8001)"),
    model: str = typer.Option(..., "--model", "-m", help="model name in the repository"),
    sequences: int = typer.Option(8, "--sequences", "-n", help="concurrent sequences (one client thread each)"),
    tokens: int = typer.Option(256, "--tokens", "-t", help="requests (tokens) per sequence"),
    soak_requests: Optional[int] = typer.Option(None, "--soak-requests", help="soak: send this many requests in "
                                                "all, starting new sequences as others end, and sample the "
                                                "server's RSS"),
    package: Optional[Path] = typer.Option(None, "--package", help="the package the repository was made from: "
                                           "check every answer bit for bit against the Python runtime"),
    server_pid: Optional[int] = typer.Option(None, "--server-pid", help="sample this process's RSS (default: the "
                                             "process listening on the URL's port, when it is on this machine)"),
    warmup_tokens: int = typer.Option(16, "--warmup-tokens", help="untimed tokens per sequence before the run"),
    seed: int = typer.Option(0, help="seed of the token streams"),
    first_sequence_id: int = typer.Option(1, help="sequence ids start here (keep clear of other clients' ids)"),
    timeout_s: float = typer.Option(30.0, "--timeout", help="per request, seconds"),
    rss_interval_s: float = typer.Option(0.5, "--rss-interval", help="seconds between RSS samples"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the JSON result to this file"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
) -> None:
    """Load a Triton server that serves a `package --triton` repository: N concurrent gRPC sequences, one
    token per request. Prints one JSON object: tokens/s, per-request latency (p50/p90/p99), errors, the
    server's own statistics, and with --package the bit-for-bit check, with --soak-requests the RSS."""
    from rwkv_deploy.bench.triton_load import LoadOptions, run_load
    from rwkv_deploy.fileio import write_bytes_atomically

    pid = server_pid if server_pid is not None else _local_pid(url)
    options = LoadOptions(url=url, model=model, sequences=sequences, tokens=tokens, requests=soak_requests,
                          warmup_tokens=warmup_tokens, seed=seed, first_sequence_id=first_sequence_id,
                          timeout_s=timeout_s, package=package, server_pid=pid, rss_interval_s=rss_interval_s)
    progress = (lambda _: None) if quiet else (lambda line: typer.echo(line, err=True))
    result = run_load(options, progress)
    text = result.to_json()
    if out is not None:
        write_bytes_atomically(out, text.encode())
    typer.echo(text, nl=False)
    if result.errors or (result.check and result.check.sequences_identical < result.check.sequences_checked):
        raise typer.Exit(1)


def _local_pid(url: str) -> int | None:
    from rwkv_deploy.bench.server_process import listening_pid

    host, _, port = url.rpartition(":")
    if host.strip("[]") not in ("127.0.0.1", "localhost", "::1", "0.0.0.0") or not port.isdigit():
        return None
    return listening_pid(int(port))
