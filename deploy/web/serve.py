"""A local static server for the browser demo (standard library only).

    python3 deploy/web/serve.py --package tiny=demo-out/fp32 [--port 8000]
    # then open http://127.0.0.1:8000/web/?package=/packages/tiny/

It serves what the page needs and nothing else: the page (/web/), the shared JS modules it imports
(/node/src/), onnxruntime-web's files (/web/node_modules/onnxruntime-web/dist/), and for each `--package
NAME=DIR` the package's manifest and the files the manifest lists, at /packages/NAME/. A package is untrusted
input, so:

- no symbolic link is ever followed (every path component is opened with O_NOFOLLOW below the mounted
  folder), only regular files are sent, and nothing is listed;
- package files go out as application/octet-stream with `Content-Security-Policy: sandbox` and `nosniff`, so an
  HTML file in a package cannot run script on the demo's origin;
- requests must name this server in their Host header (127.0.0.1, localhost or [::1] with its port), which
  stops DNS rebinding; it binds to loopback, and another address needs `--allow-remote`;
- connections time out after 30 s of silence and at most 32 are served at once; a malformed path (a NUL
  byte, `..`, bad percent-encoding) gets 400, never a traceback.

JavaScript and WebAssembly get their MIME types whatever the host's mime.types says, and every response carries
the cross-origin isolation headers, so onnxruntime-web may use threads (`&threads=N`).
"""

from __future__ import annotations

import argparse
import errno
import http.server
import ipaddress
import json
import os
import socket
import stat
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEPLOY_DIR = Path(__file__).resolve().parents[1]
APP_FILES = {"web/index.html", "web/app.js"}
MODULES = ("generation.js", "manifest.js", "npz.js", "package.js", "sampling.js", "tokenizers.js")  # browser-safe
APP_FILES |= {f"node/src/{name}" for name in MODULES}
ORT_DIST = "web/node_modules/onnxruntime-web/dist/"
ORT_SUFFIXES = (".mjs", ".wasm")
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".html": "text/html; charset=utf-8"}
TIMEOUT_S = 30
MAX_CONNECTIONS = 32
MAX_MANIFEST_BYTES = 16 << 20
CHUNK = 1 << 16


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def open_no_follow(root: Path, parts: list[str]) -> int:
    """A read descriptor of the regular file root/parts..., every component opened without following links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise OSError(errno.ENOENT, "not a regular file")
    return file_fd


def listed_files(directory: Path) -> frozenset[str]:
    """The manifest and the files its `files` map lists: all of a package the page may fetch."""
    fd = open_no_follow(directory, ["manifest.json"])
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SystemExit(f"{directory / 'manifest.json'}: larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        files = json.loads(raw).get("files", {})
    except (ValueError, AttributeError) as exc:
        raise SystemExit(f"{directory / 'manifest.json'}: not a JSON object ({exc})") from None
    if not isinstance(files, dict):
        raise SystemExit(f"{directory / 'manifest.json'}: `files` is not an object")
    return frozenset(["manifest.json", *[k for k in files if isinstance(k, str)]])


def request_parts(raw_path: str) -> list[str]:
    """The path's segments; RequestError(400) for anything a browser would not send for our files."""
    try:
        path = unquote(urlsplit(raw_path).path, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, "bad percent-encoding") from None
    if any(ord(c) < 32 or c in "\\\x7f" for c in path):
        raise RequestError(400, "control character or backslash in the path")
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise RequestError(400, "'.' or '..' in the path")
    return parts


class Handler(http.server.BaseHTTPRequestHandler):
    mounts: dict[str, tuple[Path, frozenset[str]]] = {}
    hosts: frozenset[str] | None = frozenset()  # None: any Host (--allow-remote)
    timeout = TIMEOUT_S
    server_version = "rwkv-deploy-demo"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        try:
            if self.hosts is not None and self.headers.get("Host", "") not in self.hosts:
                raise RequestError(421, "this server answers to its loopback address only (Host header)")
            parts = request_parts(self.path)
            if parts in ([""], ["web"]):
                self.send_response(302)
                self.send_header("Location", "/web/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            root, rel, package = self._route(parts)
            try:
                fd = open_no_follow(root, rel.split("/"))
            except OSError:
                raise RequestError(404, "not found") from None
            with os.fdopen(fd, "rb") as f:
                self._send_file(f, os.fstat(f.fileno()).st_size, rel, package, send_body)
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # one line, never a traceback to the client
            self._error(500, f"internal error ({type(exc).__name__})")

    def _route(self, parts: list[str]) -> tuple[Path, str, bool]:
        """(folder, relative path inside it, whether it is package content) for an allowed file."""
        if parts[:1] == ["packages"] and len(parts) >= 3 and parts[1] in self.mounts:
            root, listed = self.mounts[parts[1]]
            rel = "/".join(parts[2:])
            if rel in listed:
                return root, rel, True
            raise RequestError(404, "not a file the package's manifest lists")
        rel = "/".join(parts)
        if rel == "web/":
            rel = "web/index.html"
        if rel in APP_FILES or (rel.startswith(ORT_DIST) and "/" not in rel[len(ORT_DIST):]
                                and rel.endswith(ORT_SUFFIXES)):
            return DEPLOY_DIR, rel, False
        raise RequestError(404, "not found")

    def _send_file(self, f, size: int, rel: str, package: bool, send_body: bool) -> None:
        self.send_response(200)
        if package:
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Security-Policy", "sandbox")
        else:
            self.send_header("Content-Type", TYPES.get(Path(rel).suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not send_body:
            return
        while chunk := f.read(CHUNK):
            self.wfile.write(chunk)

    def _error(self, status: int, message: str) -> None:
        body = f"{status}: {message}\n".encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass
        self.close_connection = True

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet unless RWKV_SERVE_LOG is set
        if os.environ.get("RWKV_SERVE_LOG"):
            super().log_message(format, *args)


class DemoServer(http.server.ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: further connections are closed at once."""

    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(packages: dict[str, str | Path], port: int = 8000, bind: str = "127.0.0.1",
                allow_remote: bool = False) -> DemoServer:
    """A server (not yet started) for the page plus the given packages; port 0 picks a free port."""
    if not is_loopback(bind) and not allow_remote:
        raise SystemExit(f"--bind {bind}: not a loopback address; the demo serves package files to whoever can "
                         "reach it, so give --allow-remote to mean it")
    mounts = {}
    for name, directory in packages.items():
        path = Path(directory).resolve()
        try:
            mounts[name] = (path, listed_files(path))
        except OSError:
            raise SystemExit(f"{path / 'manifest.json'}: not found or not a regular file (is {directory} an "
                             "rwkv-deploy package?)") from None
    handler = type("MountHandler", (Handler,), {"mounts": mounts})
    server = DemoServer((bind, port), handler)
    actual = server.server_address[1]
    handler.hosts = None if allow_remote else frozenset(
        f"{host}:{actual}" for host in ("127.0.0.1", "localhost", "[::1]"))
    return server


def serve_in_thread(packages: dict[str, str | Path]) -> tuple[DemoServer, str]:
    """Start a server on a free port in a daemon thread; returns it and its base URL (ending in '/')."""
    server = make_server(packages, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", action="append", default=[], metavar="NAME=DIR",
                        help="serve package directory DIR at /packages/NAME/ (repeatable)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --bind address other than loopback (and any Host header)")
    args = parser.parse_args(argv)
    packages = {}
    for item in args.package:
        name, sep, directory = item.partition("=")
        if not sep or not name or "/" in name or name in (".", ".."):
            parser.error(f"--package wants NAME=DIR, got {item!r}")
        packages[name] = directory
    try:
        server = make_server(packages, args.port, args.bind, args.allow_remote)
    except SystemExit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    first = next(iter(packages), None)
    page = f"http://{host}:{port}/web/" + (f"?package=/packages/{first}/" if first else "")
    print(f"serving the demo at http://{host}:{port}/ - open {page}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
