"""The server's HTTP edge, before any request reaches the API: how long a client may take to send a request,
and which Host names a loopback server answers.

uvicorn (0.55, h11) waits for ever for a request head that never completes, so a few hundred half-open
connections hold sockets indefinitely; `DeadlineH11Protocol` closes a connection whose request head has not
arrived within the deadline (the body has the same deadline, in app.py). A server on loopback answers only
requests addressed to a loopback name: a web page on another site whose name the attacker re-points at
127.0.0.1 (DNS rebinding) reaches the port but sends its own Host, and gets 421 (`LoopbackHostGuard`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any, Awaitable, Callable, Iterable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """Whether a --host value listens on loopback only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header without its port: "localhost:8000" -> "localhost", "[::1]:80" -> "[::1]"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def make_protocol(header_seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than `header_seconds`."""

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_seconds, self._passed)

        def _passed(self) -> None:
            waiting_for_head = self.conn.their_state is h11.IDLE
            if waiting_for_head and not self.transport.is_closing():
                self.transport.close()

    return DeadlineH11Protocol


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class LoopbackHostGuard:
    """ASGI middleware: 421 for an HTTP request whose Host is neither a loopback name nor an allowed one."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = LOOPBACK_NAMES | {name.lower() for name in allowed}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ANY_HOST not in self.allowed:
            headers = dict(scope.get("headers") or [])
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed:
                await _misdirected(send, name)
                return
        await self.app(scope, receive, send)


async def _misdirected(send: Any, name: str) -> None:
    message = (f"this server answers requests for localhost only, not for Host {name!r} (start it with "
               "--allow-host NAME to add a name)")
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "misdirected_request",
                                 "param": None}}).encode()
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
