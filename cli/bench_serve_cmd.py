"""The `rwkv-deploy bench-serve` command: thin wrapper over rwkv_deploy.bench.serve_load."""

from __future__ import annotations

from typing import Optional

import typer

from .errors import one_line_errors


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("bench-serve")(bench_serve_cmd)


@one_line_errors
def bench_serve_cmd(
    url: str = typer.Argument(..., help="the server's URL, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., "--model", "-m", help="model id (GET /v1/models)"),
    streams: str = typer.Option("1,4,16", "--streams", help="concurrent streaming clients, one round each"),
    tokens: int = typer.Option(128, "--tokens", "-t", help="tokens generated per request"),
    prompt_tokens: int = typer.Option(64, "--prompt-tokens", help="prompt tokens per request (after the prefix)"),
    repeat_prefix: int = typer.Option(0, "--repeat-prefix", help="tokens every prompt starts with (a shared "
                                      "system prompt; the server's prefix cache can reuse it)"),
    seed: int = typer.Option(0, help="seed of the prompts"),
    soak_requests: Optional[int] = typer.Option(None, "--soak-requests", help="soak instead: send this many "
                                                "requests from max(--streams) clients, some leaving mid-stream, "
                                                "and account for every one (JSON)"),
    disconnect_fraction: float = typer.Option(0.3, "--disconnect-fraction", help="soak: share of clients that "
                                              "leave after a random number of chunks"),
    server_pid: Optional[int] = typer.Option(None, "--server-pid", help="soak: sample this process's RSS (default: "
                                             "the process listening on the URL's port, when it is on this machine)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Load an OpenAI-compatible server (`rwkv-deploy serve`) with N concurrent streaming clients: tokens/s,
    time to first token, inter-token latency p50/p99 and the prefix-cache hit rate, per concurrency."""
    from rwkv_deploy.bench.serve_load import ServeLoadError, ServeLoadOptions, run_serve_load, table

    try:
        counts = tuple(int(s) for s in streams.split(",") if s.strip())
    except ValueError:
        raise ServeLoadError(f"--streams {streams!r}: give comma-separated whole numbers, e.g. 1,4,16") from None
    options = ServeLoadOptions(url=url.rstrip("/"), model=model, streams=counts, tokens=tokens,
                               prompt_tokens=prompt_tokens, repeat_prefix=repeat_prefix, seed=seed)
    progress = lambda line: typer.echo(line, err=True)  # noqa: E731
    if soak_requests is not None:
        from rwkv_deploy.bench.serve_load import run_soak

        soak = run_soak(options, soak_requests, max(counts), disconnect_fraction,
                        server_pid if server_pid is not None else _local_pid(url), progress)
        typer.echo(soak.to_json(), nl=False)
        if soak.errors or soak.hung or soak.server_active_after:
            raise typer.Exit(1)
        return
    result = run_serve_load(options, progress)
    typer.echo(result.to_json() if as_json else table(result), nl=False)
    if any(r.errors for r in result.rounds):
        typer.echo(f"errors: {'; '.join(result.error_messages)}", err=True)
        raise typer.Exit(1)


def _local_pid(url: str) -> int | None:
    from urllib.parse import urlsplit

    from rwkv_deploy.bench.server_process import listening_pid

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    return listening_pid(parts.port)
