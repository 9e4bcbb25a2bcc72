"""The HTTP side: OpenAI's routes on Starlette, each request turned into a scheduler `Job` and its events into
a JSON response or server-sent events (`data: {...}` per chunk, then `data: [DONE]`).

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions,
DELETE /v1/sessions/{id}?model=ID, GET /health, GET /metrics. Errors are OpenAI-shaped JSON (serve.errors).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from rwkv_deploy.runtime.package import DeploymentPackage

from . import chat_template
from .errors import ApiError, bad_request, client_gone, draining, model_not_found, request_timeout, too_large
from .metrics import Metrics
from .options import ServeOptions
from .prefix_cache import PrefixCache
from .request_fields import CompletionRequest, parse_body, parse_request
from .scheduler import Failed, Finished, Job, Scheduler, Token
from .sessions import SessionStore
from .state_codec import decode_state, encode_state


DISCONNECT_POLL_S = 1.0  # how often a non-streaming request checks that its client is still there


@dataclass
class ServedModel:
    model_id: str
    package: DeploymentPackage
    template: str
    scheduler: Scheduler
    sessions: SessionStore
    cache: PrefixCache
    state_is_remote: bool = False  # Triton front-end mode: no sessions, no state in or out
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    metrics: Metrics
    options: ServeOptions
    draining: bool = False
    in_flight: int = 0  # completion requests being answered

    def model(self, model_id: str) -> ServedModel:
        if model_id not in self.models:
            raise model_not_found(model_id, sorted(self.models))
        return self.models[model_id]


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _read_body(request: Request, cap: int, seconds: float) -> bytes:
    """The request body, refused with 413 as soon as it passes `cap` bytes (before reading the rest), and with
    408 when it has not all arrived within `seconds` (a client that declares more than it sends)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(f"the request body ({int(declared)} bytes) is larger than the {cap}-byte limit",
                        "body_too_large")
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large(f"the request body is larger than the {cap}-byte limit", "body_too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), seconds)
    except asyncio.TimeoutError:
        raise request_timeout(seconds) from None
    except ClientDisconnect:
        raise client_gone() from None
    return b"".join(chunks)


class _Call:
    """One completion request in flight: its job, its events, and the session it holds."""

    def __init__(self, server: ServerState, served: ServedModel, req: CompletionRequest) -> None:
        self.server, self.served, self.req = server, served, req
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.job: Job | None = None
        self.session_held = False
        self.outcome = "cancelled"  # until the job finishes or fails
        self.id = ("chatcmpl-" if req.endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def emit(self, event: Any) -> None:  # scheduler thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def start(self) -> None:
        """Tokenize, check limits, claim the session, build and submit the job (errors before any output)."""
        req, served, options = self.req, self.served, self.server.options
        tokenizer = served.package.tokenizer
        stop = req.stop
        if req.endpoint == "chat":
            if served.template == "none":
                raise bad_request(f"model {served.model_id!r} is served without a chat template; use "
                                  "/v1/completions", "model", "no_chat_template")
            text = chat_template.render(served.template, req.messages, req.enable_thinking)
            stop = chat_template.CHAT_STOP if stop is None else stop
        else:
            text = req.prompt
        if isinstance(text, str):
            if len(text) > 32 * options.max_prompt_tokens + 64:  # surely too long: no tokenizing needed
                raise too_large(f"the prompt is longer than {options.max_prompt_tokens} tokens", "prompt_too_long")
            tokens = await anyio.to_thread.run_sync(tokenizer.encode, text)
        else:
            tokens = text
            vocab = served.package.vocab_size
            bad = [t for t in tokens if not 0 <= t < vocab]
            if bad:
                raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {vocab})", "prompt")
        if not tokens:
            raise bad_request("the prompt encodes to no tokens", "prompt")
        if len(tokens) > options.max_prompt_tokens:
            raise too_large(f"the prompt has {len(tokens)} tokens, more than the limit of "
                            f"{options.max_prompt_tokens}", "prompt_too_long")
        if served.state_is_remote and (req.session_id or req.state or req.return_state):
            raise bad_request("session_id, state and return_state are not available when the state is held by "
                              "Triton (serve --triton)", "session_id" if req.session_id else "state",
                              "unsupported_value")
        if req.session_id is not None and req.state is not None:
            raise bad_request("give either session_id or state, not both", "state")
        start = None
        if req.state is not None:
            start = await anyio.to_thread.run_sync(decode_state, req.state, served.package.manifest)
        want_state = req.return_state or req.session_id is not None
        tail = None
        if req.endpoint == "chat" and want_state:
            template = served.template
            tail = lambda reply: tokenizer.encode(chat_template.assistant_tail(template, reply))  # noqa: E731
        if req.session_id is not None:
            start = served.sessions.claim(req.session_id)
            self.session_held = True
        self.job = Job(list(tokens), req.params, req.max_tokens, self.emit, tuple(stop or ()), req.seed, start,
                       tail, want_state)
        try:
            served.scheduler.submit(self.job)
        except ApiError:
            self.release(None)
            raise

    def release(self, state: Any) -> None:
        if self.session_held:
            self.served.sessions.release(self.req.session_id, state)
            self.session_held = False

    def cancel(self) -> None:
        if self.job is not None and not self.job.cancelled:
            self.job.cancelled = True
            self.served.scheduler.wake()
        self.release(None)

    async def events_until_done(self, request: Request | None = None) -> AsyncIterator[Token | Finished | Failed]:
        """The job's events up to its end; with `request` (a non-streaming answer), a client that went away
        cancels the job (looked at every second while waiting)."""
        checked = time.monotonic()
        while True:
            if request is None:
                event = await self.events.get()
            else:
                try:
                    event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        self.cancel()
                        return
                if event is None:
                    continue
            yield event
            if isinstance(event, (Finished, Failed)):
                return

    # -- response bodies ---------------------------------------------------------------------------------
    def usage(self, done: Finished) -> dict[str, Any]:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.token_ids),
                "total_tokens": done.prompt_tokens + len(done.token_ids),
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}

    def head(self, chunk: bool) -> dict[str, Any]:
        if self.req.endpoint == "chat":
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.served.model_id}

    def choice(self, text: str | None, finish_reason: str | None, chunk: bool, first: bool = False) -> dict[str, Any]:
        if self.req.endpoint != "chat":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        if not chunk:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    async def extras(self, done: Finished) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.req.session_id is not None:
            extra["session_id"] = self.req.session_id
        if self.req.return_token_ids:
            extra["token_ids"] = done.token_ids
        if self.req.return_state and done.state is not None:
            extra["state"] = await anyio.to_thread.run_sync(encode_state, done.state)
        return extra


def build_app(server: ServerState) -> Starlette:
    metrics = server.metrics

    def count(endpoint: str, model: str, outcome: str) -> None:
        metrics.add("requests_total", endpoint=endpoint, model=model, outcome=outcome)

    async def completion(request: Request, endpoint: str) -> Response:
        if server.draining:
            return _error_response(draining())
        model_id = "-"
        call = None
        try:
            cap = int(server.options.max_body_mib * (1 << 20))
            body = parse_body(await _read_body(request, cap, server.options.request_timeout))
            req = parse_request(body, endpoint)
            served = server.model(req.model)
            model_id = served.model_id
            call = _Call(server, served, req)
            server.in_flight += 1
            try:
                await call.start()
            except BaseException:
                server.in_flight -= 1
                raise
        except ApiError as error:
            count(endpoint, model_id, str(error.status))
            return _error_response(error)
        if req.stream:
            def closed() -> None:
                call.cancel()  # a no-op after the job finished; frees the slot of a client that went away
                server.in_flight -= 1
                count(endpoint, model_id, call.outcome)

            return _EventStream(_stream(call), closed)
        try:
            async for event in call.events_until_done(request):
                if isinstance(event, Failed):
                    call.release(None)
                    count(endpoint, model_id, str(event.error.status))
                    return _error_response(event.error)
                if isinstance(event, Finished):
                    call.release(event.state)
                    metrics.add("prompt_tokens_total", event.prompt_tokens, model=model_id)
                    count(endpoint, model_id, "ok")
                    choice = call.choice(event.text, event.finish_reason, False)
                    return JSONResponse({**call.head(False), "choices": [choice], "usage": call.usage(event),
                                         **await call.extras(event)})
            count(endpoint, model_id, "cancelled")
            return Response(status_code=499)  # nobody is listening any more
        finally:
            call.cancel()  # a no-op after Finished; frees the slot when the handler is cancelled
            server.in_flight -= 1

    async def _stream(call: _Call) -> AsyncIterator[str]:
        model_id, endpoint = call.served.model_id, call.req.endpoint
        try:
            if endpoint == "chat":
                yield _sse({**call.head(True), "choices": [call.choice(None, None, True, first=True)]})
            async for event in call.events_until_done():
                if isinstance(event, Token):
                    if event.text:
                        yield _sse({**call.head(True), "choices": [call.choice(event.text, None, True)]})
                elif isinstance(event, Failed):
                    call.release(None)
                    call.outcome = str(event.error.status)
                    yield _sse(event.error.body())
                else:
                    call.release(event.state)
                    metrics.add("prompt_tokens_total", event.prompt_tokens, model=model_id)
                    call.outcome = "ok"
                    last = {**call.head(True), "choices": [call.choice(None, event.finish_reason, True)],
                            **await call.extras(event)}
                    if call.req.include_usage:
                        yield _sse(last)
                        last = {**call.head(True), "choices": [], "usage": call.usage(event)}
                    yield _sse(last)
            yield "data: [DONE]\n\n"
        finally:
            call.cancel()

    async def completions(request: Request) -> Response:
        return await completion(request, "completions")

    async def chat_completions(request: Request) -> Response:
        return await completion(request, "chat")

    def model_card(served: ServedModel) -> dict[str, Any]:
        return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "rwkv-deploy"}

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(m) for m in server.models.values()]})

    async def get_model(request: Request) -> Response:
        try:
            return JSONResponse(model_card(server.model(request.path_params["model"])))
        except ApiError as error:
            return _error_response(error)

    async def delete_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            model_id = request.query_params.get("model")
            models = [server.model(model_id)] if model_id else list(server.models.values())
            deleted = any([m.sessions.forget(session_id) for m in models])
        except ApiError as error:
            return _error_response(error)
        return JSONResponse({"id": session_id, "object": "session", "deleted": deleted})

    async def health(request: Request) -> Response:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(server.models)})

    async def metrics_text(request: Request) -> Response:
        for served in server.models.values():
            metrics.set("sessions", len(served.sessions), model=served.model_id)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        "invalid_request_error", code))

    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _EventStream(StreamingResponse):
    """Server-sent events whose `closed` callback runs however the response ends (also when the client went
    away before the first event, when the event generator never started)."""

    def __init__(self, events: AsyncIterator[str], closed: Any) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._closed = closed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._closed()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
