"""`rwkv-deploy serve` as a real process on 127.0.0.1 for the tests: started on a free port, waited for on
/health, stopped with SIGTERM (whose exit status tests check) or killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from tests.helpers.ports import free_port

START_TIMEOUT_S = 60
# the server runs without PyTorch and onnx: importing either fails in the server's process
_NO_TORCH = ("import sys; sys.modules.update(dict.fromkeys(('torch', 'onnx', 'safetensors'))); "
             "from rwkv_deploy.cli.main import app; app()")


@dataclass
class ServeProcess:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the series does not exist yet)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        for line in text.splitlines():
            if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
                series, _, value = line.rpartition(" ")
                inner = series[len(name):].strip("{}")
                if wanted <= set(inner.split(",")) if inner else not wanted:
                    return float(value)
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit status (SIGKILL after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the server did not exit within {timeout} s of {sig!r}:\n{self.log_tail()}")


def start_serve(packages: list[str | Path], log: Path, *options: str) -> ServeProcess:
    """Start `rwkv-deploy serve PACKAGES --port FREE OPTIONS...` and wait until /health answers."""
    port = free_port()
    command = [sys.executable, "-c", _NO_TORCH, "serve", *map(str, packages), "--port", str(port),
               "--threads", "1", *options]
    out = open(log, "wb")
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    server = ServeProcess(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rwkv-deploy serve exited {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"rwkv-deploy serve did not answer /health within {START_TIMEOUT_S} s:\n{server.log_tail()}")


@contextmanager
def serving(tmp_path_factory, packages: list[str | Path], *options: str) -> Iterator[ServeProcess]:
    """A server for a test module: its log in a fresh folder, stopped with SIGTERM at the end, which must exit 0."""
    process = start_serve(packages, tmp_path_factory.mktemp("serve") / "serve.log", *options)
    try:
        yield process
    except BaseException:  # a failed assertion in the block: stop the server anyway, the failure is the news
        process.stop(signal.SIGKILL)
        raise
    assert process.stop() == 0, process.log_tail()
