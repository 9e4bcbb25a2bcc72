"""A local static server for the browser demo (standard library only).

    python3 deploy/web/serve.py --package tiny=demo-out/fp32 [--port 8000]
    # then open http://127.0.0.1:8000/web/?package=/packages/tiny/

It serves deploy/ at / (the page at /web/, the shared JS modules at /node/src/, onnxruntime-web from
/web/node_modules/) and each `--package NAME=DIR` at /packages/NAME/. JavaScript and WebAssembly get their
proper MIME types whatever the host's mime.types says, and every response carries the cross-origin isolation
headers, so onnxruntime-web may use threads (`&threads=N`). It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEPLOY_DIR = Path(__file__).resolve().parents[1]
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".data": "application/octet-stream", ".npz": "application/octet-stream",
         ".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8", ".css": "text/css"}


class Handler(http.server.SimpleHTTPRequestHandler):
    mounts: dict[str, Path] = {}
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def translate_path(self, path: str) -> str:
        parts = [p for p in unquote(urlsplit(path).path).split("/") if p]
        if ".." in parts:
            return str(DEPLOY_DIR / "__forbidden__")
        if len(parts) >= 2 and parts[0] == "packages" and parts[1] in self.mounts:
            return str(self.mounts[parts[1]].joinpath(*parts[2:]))
        return str(DEPLOY_DIR.joinpath(*parts))

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet unless RWKV_SERVE_LOG is set
        if os.environ.get("RWKV_SERVE_LOG"):
            super().log_message(format, *args)


def make_server(packages: dict[str, str | Path], port: int = 8000, bind: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """A server (not yet started) for deploy/ plus the given packages; port 0 picks a free port."""
    mounts = {}
    for name, directory in packages.items():
        path = Path(directory).resolve()
        if not (path / "manifest.json").is_file():
            raise SystemExit(f"{path / 'manifest.json'}: not found (is {directory} an rwkv-deploy package?)")
        mounts[name] = path
    handler = type("MountHandler", (Handler,), {"mounts": mounts})
    return http.server.ThreadingHTTPServer((bind, port), functools.partial(handler, directory=str(DEPLOY_DIR)))


def serve_in_thread(packages: dict[str, str | Path]) -> tuple[http.server.ThreadingHTTPServer, str]:
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
    args = parser.parse_args(argv)
    packages = {}
    for item in args.package:
        name, sep, directory = item.partition("=")
        if not sep or not name or "/" in name:
            parser.error(f"--package wants NAME=DIR, got {item!r}")
        packages[name] = directory
    server = make_server(packages, args.port, args.bind)
    host, port = server.server_address[:2]
    first = next(iter(packages), None)
    page = f"http://{host}:{port}/web/" + (f"?package=/packages/{first}/" if first else "")
    print(f"serving {DEPLOY_DIR} at http://{host}:{port}/ - open {page}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
