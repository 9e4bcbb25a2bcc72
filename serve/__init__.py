"""An OpenAI-compatible HTTP server over the runtime: continuous batching, a prefix cache of recurrent states,
sessions and stateless state passing. Needs the `[serve]` extra (Starlette, uvicorn); never PyTorch.

    from rwkv_deploy.serve import ServeOptions, run_server
    run_server(["out/pkg"], ServeOptions(port=8000))

Layout: `options` (settings), `errors` (OpenAI-shaped errors), `request_fields` (request bodies -> jobs),
`chat_template` (World / G1 prompts), `scheduler` (the thread that owns a backend and steps every live request),
`prefix_cache` and `sessions` (stored states), `state_codec` (states as base64 state files), `metrics`
(Prometheus), `app` (the Starlette routes), `server` (uvicorn with draining on SIGTERM).
"""

from __future__ import annotations

from collections.abc import Sequence

from .options import ServeOptions

__all__ = ["ServeOptions", "run_server"]


def run_server(packages: Sequence[str], options: ServeOptions) -> None:
    """Serve `packages` (paths, or NAME=PATH) until SIGTERM; Starlette and uvicorn are imported only here."""
    from .server import run_server as run

    run(packages, options)
