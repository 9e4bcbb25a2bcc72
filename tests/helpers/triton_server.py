"""A real Triton Inference Server for the tests, run with scripts/triton_server.sh (the same script users run).

One server per test session (fixture `triton_server` in tests/conftest.py) in explicit model-control mode:
tests add models to its repository with `serve(...)` (a `package --triton` repository, loaded through
Triton's load API) and take fresh sequence ids from `sequence_ids()`, so no two tests share a sequence.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "triton_server.sh"
VENDOR = REPO_ROOT.parent / "shared" / "vendor"
STOP_TIMEOUT_S = 30  # the script's exit timeout is 5 s; this is the test's own limit


def skip_reason() -> str | None:
    """Why no server can be had here, or None. The only reason is the issue's: no ../shared/vendor (the backend's
    sources) and no network to fetch them; with either, a failure to start is a test failure."""
    if (VENDOR / "triton-onnxruntime-backend").is_dir():
        return None
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return None
    except OSError:
        return f"no {VENDOR} (Triton's ONNX Runtime backend sources) and no network to fetch them"


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the script and the server it started (its own process group: start_new_session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@dataclass
class TritonServer:
    process: subprocess.Popen  # scripts/triton_server.sh, which runs tritonserver as its child
    pid: int  # tritonserver's
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: Path
    log: Path
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    models: dict[str, Path] = field(default_factory=dict)  # served model name -> package

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def sequence_ids(self, count: int = 1) -> list[int]:
        """Sequence (correlation) ids never used before in this session."""
        with self._lock:
            return [next(self._ids) for _ in range(count)]

    def serve(self, package: Path, name: str, **options) -> str:
        """Write `package` as a Triton repository (write_repository's options) into the server's repository and
        load it; returns the model name. A name is written and loaded once per session."""
        from rwkv_deploy.targets.triton import write_repository

        if name in self.models:
            assert self.models[name] == package, f"model name {name} used for two packages"
            return name
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.repository.parent))
        repo = write_repository(package, staging / "repo", name=name, **options)
        for model in repo.models:
            self.add_model_dir(repo.root / model)
        shutil.rmtree(staging)
        self.models[name] = package
        return name

    def add_model_dir(self, model_dir: Path) -> str:
        """Copy a model directory of a repository into the server's repository and load it."""
        target = self.repository / model_dir.name
        assert not target.exists(), f"{target.name} is already served"
        shutil.copytree(model_dir, target)
        self.client().load_model(model_dir.name)
        return model_dir.name

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM to the script, which stops the server; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(self.process)
            raise AssertionError(f"triton_server.sh did not stop within {STOP_TIMEOUT_S}s of SIGTERM:\n"
                                 f"{self.log_tail()}") from None


def start_server(repository: Path, log: Path, *extra: str, timeout_s: float = 900,
                 env: dict[str, str] | None = None) -> TritonServer:
    """Start scripts/triton_server.sh on `repository` on free ports; returns once it printed the server's PID
    (the server is ready then). The first start of a cache downloads the server and builds the backend."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    with open(log, "wb") as err:
        process = subprocess.Popen([str(SCRIPT), str(repository), "--http-port", str(http), "--grpc-port", str(grpc),
                                    "--metrics-port", str(metrics), *(("--", *extra) if extra else ())],
                                   stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    line = [""]
    reader = threading.Thread(target=lambda: line.__setitem__(0, process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not line[0].startswith("tritonserver pid "):
        kill_group(process)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"scripts/triton_server.sh did not start the server (exit {process.returncode}):\n{tail}")
    return TritonServer(process, int(line[0].split()[-1]), http, grpc, metrics, repository, log)
