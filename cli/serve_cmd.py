"""The `rwkv-deploy serve` command: thin wrapper over rwkv_deploy.serve (needs the `[serve]` extra)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .errors import one_line_errors
from .extras import MissingExtraError


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("serve")(serve_cmd)


def _require_serve_extra() -> None:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"`rwkv-deploy serve` needs {' and '.join(missing)}, which this install lacks: "
                                'pip install "rwkv-deploy[serve]"')


def _templates(values: List[str]) -> tuple[str, dict[str, str]]:
    """--chat-template TEMPLATE (every model) or NAME=TEMPLATE (one model), repeatable."""
    from rwkv_deploy.serve.options import ServeOptions

    default, per_model = ServeOptions.default_template, {}
    for value in values:
        name, sep, template = value.rpartition("=")
        if sep:
            per_model[name] = template
        else:
            default = template
    return default, per_model


@one_line_errors
def serve_cmd(
    packages: List[str] = typer.Argument(..., metavar="PKG...", help="package directories or archives; the "
                                         "model id is the folder or archive name (NAME=PATH names it yourself)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    max_batch: int = typer.Option(16, "--max-batch", help="requests stepped together per model"),
    max_queue: int = typer.Option(64, "--max-queue", help="requests waiting for a slot per model; more get 429"),
    max_prompt_tokens: int = typer.Option(32768, "--max-prompt-tokens", help="longer prompts get 413"),
    max_body_mib: float = typer.Option(16.0, "--max-body-mib", help="larger request bodies get 413"),
    state_cache_mib: float = typer.Option(512.0, "--state-cache-mib", help="prefix-cache memory per model "
                                          "(0: no prefix cache)"),
    max_sessions: int = typer.Option(1024, "--max-sessions", help="session states kept per model (LRU)"),
    prefill_chunk: Optional[int] = typer.Option(None, "--prefill-chunk", help="tokens per prefill call (default "
                                                "512); prefix-cache entries sit at its multiples"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads per "
                                          "model (default: one per core)"),
    cpu_graph: str = typer.Option("auto", "--cpu-graph", help="the packages' CPU graphs (`rwkv-deploy build-cpu`): "
                                  "auto takes each on the CPU when this install built its operators, on insists, "
                                  "off runs the portable graphs"),
    spin_wait: bool = typer.Option(False, "--spin-wait", help="ONNX Runtime's worker threads spin between ops instead "
                                   "of sleeping: faster with cores given to the server, slower beside other busy "
                                   "processes (docs/bench.md)"),
    chat_template: List[str] = typer.Option([], "--chat-template", help="world | g1 | none, for every model, or "
                                            "NAME=TEMPLATE for one (repeatable); default world"),
    drain_seconds: float = typer.Option(30.0, "--drain-seconds", help="after SIGTERM, how long streams in flight "
                                        "may take to finish"),
    access_log: bool = typer.Option(False, "--access-log", help="log every request (off by default)"),
    triton: Optional[str] = typer.Option(None, "--triton", help="HOST:PORT of a Triton server (gRPC) serving a "
                                         "`package --triton` repository of PKG: be its front end, the state held "
                                         "by Triton (needs the [triton] extra)"),
    triton_model: Optional[str] = typer.Option(None, "--model", help="with --triton: the model's name there"),
    request_timeout: float = typer.Option(30.0, "--request-timeout", help="seconds a client has to send a "
                                          "request's head (else the connection is closed), then its body (else 408)"),
    max_connections: int = typer.Option(1024, "--max-connections", help="open connections and requests beyond "
                                        "this get 503"),
    allow_host: List[str] = typer.Option([], "--allow-host", help="a Host name a server on loopback also answers "
                                         "(repeatable; '*' any): for a reverse proxy that keeps the client's Host. "
                                         "Otherwise only localhost, 127.0.0.1 and [::1] (against DNS rebinding)"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip hashing the packages' files (trusted local "
                                   "packages); the path rules are always checked"),
) -> None:
    """Serve packages over OpenAI's HTTP API (/v1/completions, /v1/chat/completions, /v1/models), batching
    all requests of a model together, with a prefix cache, sessions and state in and out (docs/deploy.md)."""
    _require_serve_extra()
    from rwkv_deploy.serve import ServeOptions, run_server
    from rwkv_deploy.runtime.generation import PREFILL_CHUNK

    default, per_model = _templates(chat_template)
    options = ServeOptions(host=host, port=port, max_batch=max_batch, max_queue=max_queue,
                           max_prompt_tokens=max_prompt_tokens, max_body_mib=max_body_mib,
                           state_cache_mib=state_cache_mib, max_sessions=max_sessions,
                           prefill_chunk=prefill_chunk or PREFILL_CHUNK, threads=threads, cpu_graph=cpu_graph,
                           spin_wait=spin_wait, chat_templates=per_model, default_template=default,
                           drain_seconds=drain_seconds,
                           access_log=access_log, verify=not no_verify, triton=triton, triton_model=triton_model,
                           request_timeout=request_timeout, max_connections=max_connections,
                           allowed_hosts=tuple(allow_host))
    import rwkv_deploy.runtime.onnx_backend  # noqa: F401  (loaded before an archive is extracted, as generate does)
    run_server(packages, options)
