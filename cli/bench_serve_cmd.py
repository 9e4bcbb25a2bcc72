"""The `rwkv-deploy bench-serve` command: thin wrapper over rwkv_deploy.bench.serve_load."""

from __future__ import annotations

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
    result = run_serve_load(options, lambda line: typer.echo(line, err=True))
    typer.echo(result.to_json() if as_json else table(result), nl=False)
    if any(r.errors for r in result.rounds):
        typer.echo(f"errors: {'; '.join(result.error_messages)}", err=True)
        raise typer.Exit(1)
