"""deploy/web/serve.py against hostile packages and requests: a real server on 127.0.0.1 and raw HTTP requests.

A package is untrusted input: a link inside it must not turn the demo into a file server for the rest of the disk,
an HTML file inside it must not run script on the demo's origin, and only what the page needs is served."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.jsutil import WEB_DIR
from tests.deploy.test_browser import load_serve_module
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

serve = load_serve_module()


@pytest.fixture(scope="module")
def package(shared_package, tmp_path_factory) -> Path:
    """A small package with a planted link to a secret file and a linked folder, neither listed nor hashed, and
    an HTML page that the manifest does list (a package may ship any file it hashes)."""
    root = tmp_path_factory.mktemp("web-server")
    pkg = Path(shutil.copytree(shared(shared_package, "7"), root / "pkg"))
    secret = root / "secret.txt"
    secret.write_text("the user's private file\n")
    (root / "secret-dir").mkdir()
    (root / "secret-dir" / "key").write_text("private key\n")
    os.symlink(secret, pkg / "link.txt")
    os.symlink(root / "secret-dir", pkg / "linked-dir")
    return pkg


@pytest.fixture(scope="module")
def server(package):
    httpd, base = serve.serve_in_thread({"tiny": package})
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def get(port: int, path: str, host: str | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_the_page_its_modules_and_the_listed_package_files_are_served(server, package):
    status, headers, body = get(server, "/web/")
    assert status == 200 and b"<script" in body and headers["Content-Type"].startswith("text/html")
    assert get(server, "/node/src/package.js")[1]["Content-Type"] == "text/javascript"
    assert get(server, "/web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs")[0] == 200
    status, headers, body = get(server, "/packages/tiny/manifest.json")
    assert status == 200 and body == (package / "manifest.json").read_bytes()
    assert headers["Content-Type"] == "application/octet-stream" and headers["Content-Security-Policy"] == "sandbox"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    graph = next(p.name for p in package.glob("*.onnx"))
    assert get(server, f"/packages/tiny/{graph}")[2] == (package / graph).read_bytes()
    assert get(server, "/")[0] == 302


@pytest.mark.parametrize("path", ["/packages/tiny/link.txt", "/packages/tiny/linked-dir/key",
                                  "/packages/tiny/linked-dir/", "/packages/tiny/", "/packages/", "/web/serve.py",
                                  "/node/src/node.js", "/web/node_modules/", "/web/node_modules/.package-lock.json",
                                  "/web/node_modules/onnxruntime-web/package.json", "/packages/other/manifest.json"])
def test_links_listings_and_files_the_page_does_not_need_are_not_served(server, path):
    status, _, body = get(server, path)
    assert status == 404, (path, status)
    assert b"private" not in body and b"<a href" not in body


def test_a_listed_file_that_is_a_link_is_not_followed(server, package):
    listed = next(p for p in package.iterdir() if p.suffix == ".onnx")
    original = listed.read_bytes()
    target = package.parent / "swapped.onnx"
    target.write_bytes(b"outside the package")
    listed.unlink()
    os.symlink(target, listed)
    try:
        assert get(server, f"/packages/tiny/{listed.name}")[0] == 404
    finally:
        listed.unlink()
        listed.write_bytes(original)


@pytest.mark.parametrize("path", ["/web/%00", "/packages/tiny/%2e%2e/secret.txt", "/packages/tiny/..%2fsecret.txt",
                                  "/web/%ff", "/web/..\\serve.py", "/packages/tiny/a%0ab"])
def test_malformed_paths_get_400_not_a_traceback(server, path):
    status, _, body = get(server, path)
    assert status == 400 and body.startswith(b"400: ") and b"Traceback" not in body


@pytest.mark.parametrize("host", ["evil.example:80", "127.0.0.1", "", "127.0.0.1:1"])
def test_a_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page on another name that resolves to 127.0.0.1 must not read the demo's files."""
    status, _, _ = get(server, "/packages/tiny/manifest.json", host=host)
    assert status == 421
    assert get(server, "/packages/tiny/manifest.json", host=f"localhost:{server}")[0] == 200


def test_connections_beyond_the_cap_are_closed_at_once(server):
    idle = [socket.create_connection(("127.0.0.1", server)) for _ in range(serve.MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        late = socket.create_connection(("127.0.0.1", server), timeout=5)
        late.sendall(b"GET /web/ HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % server)
        assert late.recv(100) == b""  # closed at once: every slot is taken
        late.close()
    finally:
        for s in idle:
            s.close()
    time.sleep(0.5)
    assert get(server, "/web/")[0] == 200  # the slots come back


def test_idle_connections_are_closed_by_the_timeout(package, monkeypatch):
    monkeypatch.setattr(serve.Handler, "timeout", 0.5)
    httpd, _ = serve.serve_in_thread({"tiny": package})
    try:
        idle = socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=5)
        started = time.monotonic()
        assert idle.recv(100) == b""
        assert time.monotonic() - started < 4
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_non_loopback_bind_needs_allow_remote(package):
    done = subprocess.run([sys.executable, str(WEB_DIR / "serve.py"), "--package", f"tiny={package}", "--bind",
                           "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bind 0.0.0.0" in lines[0] and "--allow-remote" in lines[0]
    server = serve.make_server({"tiny": package}, port=0, bind="0.0.0.0", allow_remote=True)
    server.server_close()
