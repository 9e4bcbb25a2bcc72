"""Start serving: open each package through the trust boundary, build its backend and scheduler, run uvicorn.

SIGTERM (or Ctrl-C) drains: new requests get 503 and /health says "draining", the streams in flight run to
their end for up to `drain_seconds`, any still running then end with a 503 error event, and the process
exits 0. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.limits import MIB
from rwkv_deploy.runtime.backends import cpu_options, make_backend
from rwkv_deploy.runtime.package import DeploymentPackage, package_directory

from .app import ServedModel, ServerState, build_app
from .errors import draining
from .metrics import Metrics
from .options import ServeOptions
from .prefix_cache import PrefixCache, cut_granule
from .scheduler import Scheduler
from .sessions import SessionStore

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class ServeError(RefusedError):
    """The server cannot start as asked (package, port, options)."""


def model_id_for(spec: str) -> tuple[str, str]:
    """(model id, path) of a command-line package: `NAME=PATH`, or PATH whose id is its last path component
    without an archive suffix (`out/rwkv7-0.1b/` -> `rwkv7-0.1b`, `rwkv7.tar.gz` -> `rwkv7`)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    base = Path(spec.rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return base, spec


@contextlib.contextmanager
def open_models(specs: Sequence[str], options: ServeOptions, metrics: Metrics) -> Iterator[dict[str, ServedModel]]:
    """The served models, their schedulers running; archives stay extracted until the block ends."""
    models: dict[str, ServedModel] = {}
    if options.triton is not None and len(specs) != 1:
        raise ServeError("--triton serves one model: give the one package its repository was written from")
    with contextlib.ExitStack() as stack:
        for spec in specs:
            model_id, path = model_id_for(spec)
            if model_id in models:
                raise ServeError(f"{path}: model id {model_id!r} is served twice; name one with NAME=PATH")
            directory = stack.enter_context(package_directory(path))
            package = DeploymentPackage.open(directory, verify=options.verify)
            if package.tokenizer is None:
                raise ServeError(f"{path}: the package has no tokenizer; the server takes text prompts")
            if options.triton is not None:
                from .triton_backend import TritonSequenceBackend

                backend = TritonSequenceBackend(options.triton, options.triton_model, package, options.max_batch)
            else:
                backend = make_backend("onnxruntime", package,
                                       **cpu_options("onnxruntime", options.threads, options.spin_wait,
                                                     options.cpu_graph))
            cache = PrefixCache(int(options.state_cache_mib * MIB), cut_granule(options.prefill_chunk))
            scheduler = Scheduler(model_id, backend, package.tokenizer, metrics, cache, options.max_batch,
                                  options.max_queue, options.prefill_chunk)
            models[model_id] = ServedModel(model_id, package, options.template_for(model_id), scheduler,
                                           SessionStore(options.max_sessions), cache,
                                           state_is_remote=getattr(backend, "state_is_remote", False))
            stack.callback(scheduler.stop)
            scheduler.start()
        unknown = set(options.chat_templates) - set(models)
        if unknown:
            raise ServeError(f"--chat-template names model {sorted(unknown)[0]!r}, which is not served")
        yield models


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn with our signal handling: drain on the first signal, exit 0 (uvicorn re-raises the signal)."""

        state: ServerState
        drain_started: float | None = None
        aborted = False

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def on_signal(self, sig: int, frame: object) -> None:
            if self.state.draining:  # a second signal: stop now
                self.should_exit = self.force_exit = True
                return
            self.state.draining = True
            self.drain_started = time.monotonic()
            print(f"draining: {self.state.in_flight} requests in flight, new ones get 503", file=sys.stderr)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None and not self.should_exit:
                waited = time.monotonic() - self.drain_started
                if self.state.in_flight <= 0:
                    self.should_exit = True
                elif waited > self.state.options.drain_seconds and not self.aborted:
                    self.aborted = True
                    for served in self.state.models.values():
                        served.scheduler.abort_all(draining())
                elif waited > self.state.options.drain_seconds + 5:
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer


def run_server(specs: Sequence[str], options: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT has drained the requests in flight."""
    import uvicorn

    from .http_edge import LoopbackHostGuard, is_loopback, make_protocol

    metrics = Metrics()
    with open_models(specs, options, metrics) as models:
        state = ServerState(models, metrics, options)
        app = build_app(state)
        if is_loopback(options.host):
            app = LoopbackHostGuard(app, options.allowed_hosts)
        config = uvicorn.Config(app, host=options.host, port=options.port, lifespan="off",
                                access_log=options.access_log, log_level="warning", timeout_graceful_shutdown=5,
                                http=make_protocol(options.request_timeout), limit_concurrency=options.max_connections)
        if options.access_log:  # uvicorn logs requests at INFO; everything else stays at WARNING
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        server = _server_class()(config)
        server.state = state
        spinning = ", spinning threads" if options.spin_wait and options.triton is None else ""
        names = ", ".join(f"{m.model_id} ({m.template} chat template"
                          f"{', CPU graph' if getattr(m.scheduler.backend, 'runs_cpu_graph', False) else ''}{spinning})"
                          for m in models.values())
        if options.triton is not None:
            names += f" through Triton at {options.triton} (model {options.triton_model})"
        print(f"serving {names} at http://{options.host}:{options.port}/v1", file=sys.stderr, flush=True)
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind
            server.started = False
        if not server.started:
            raise ServeError(f"cannot listen on {options.host}:{options.port} (see the message above)")
    print("stopped", file=sys.stderr)
