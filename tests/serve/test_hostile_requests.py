"""Hostile HTTP requests against a real `rwkv-deploy serve` (tests/helpers/hostile_http.py): each gets the
answer it should (a 4xx in OpenAI's shape, or a closed connection), the server stays healthy, and nothing it
logs is a traceback. Then the edges one at a time: the header deadline frees half-open connections, a loopback
server answers only loopback names unless told, a client that leaves mid-body costs nothing."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from rwkv_deploy.serve.http_edge import host_name, is_loopback
from tests.helpers.hostile_http import CASES, MODEL, REQUEST_TIMEOUT, HttpCase, exchange, status_of
from tests.helpers.serve_process import serving

OPTIONS = ("--request-timeout", str(REQUEST_TIMEOUT), "--max-body-mib", "0.25")


@pytest.fixture(scope="module")
def server(serve_pkg, tmp_path_factory):
    with serving(tmp_path_factory, [f"{MODEL}={serve_pkg}"], *OPTIONS) as process:
        yield process


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_request_gets_its_answer_and_the_server_stays_well(server, case: HttpCase) -> None:
    answer = case.send("127.0.0.1", server.port)
    assert case.accepts(status_of(answer)), answer[:400]
    if b"application/json" in answer.split(b"\r\n\r\n")[0]:
        assert b'"error"' in answer  # OpenAI's error shape, not an HTML page
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()


def test_half_open_connections_are_closed_at_the_deadline(server) -> None:
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(50)]
    for s in sockets:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localh")
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # others are served meanwhile
    time.sleep(REQUEST_TIMEOUT + 1.5)
    closed = 0
    for s in sockets:
        s.settimeout(2)
        try:
            closed += s.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
    assert closed == len(sockets)


def test_a_keep_alive_connection_may_send_several_requests(server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200


def test_loopback_names_with_any_port_are_answered(server) -> None:
    for host in (b"localhost", b"127.0.0.1:1234", b"[::1]:8000", b"LOCALHOST:80"):
        answer = exchange("127.0.0.1", server.port,
                          b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200, (host, answer[:300])


def test_allow_host_adds_a_name_for_a_reverse_proxy(serve_pkg, tmp_path_factory) -> None:
    with serving(tmp_path_factory, [f"{MODEL}={serve_pkg}"], "--allow-host", "api.example.com") as process:
        def ask(host: bytes) -> int | str:
            return status_of(exchange("127.0.0.1", process.port,
                                      b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"))
        assert ask(b"api.example.com") == 200
        assert ask(b"evil.example") == 421


def test_a_client_that_leaves_mid_body_costs_nothing(server) -> None:
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{\"mo")
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()


@pytest.mark.parametrize("header, name", [("localhost:8000", "localhost"), ("[::1]:80", "[::1]"), ("[::1]", "[::1]"),
                                          ("Example.COM", "example.com"), ("::1", "::1"), ("", "")])
def test_host_name_drops_the_port(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.2", False),
                                            ("::", False), ("example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
