"""scripts/triton_server.sh: its arguments, its cache key, and the server it runs (the session's server of
tests/conftest.py, started and stopped by this script)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.ports import free_port
from tests.helpers.triton_server import SCRIPT, VENDOR, kill_group

pytestmark = pytest.mark.slow  # builds and starts a real Triton server

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 in /proc/net/tcp, and IPv4-mapped in tcp6


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    ([], "usage: scripts/triton_server.sh REPO --http-port P --grpc-port Q"),
    (["REPO", "--http-port", "8000"], "usage: scripts/triton_server.sh REPO"),
    (["REPO", "--http-port", "x", "--grpc-port", "8001"], "port x: expected 1-65535"),
    (["REPO", "--http-port", "8000", "--grpc-port", "70000"], "port 70000: expected 1-65535"),
    (["REPO", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "0"], "port 0: expected 1-65535"),
    (["nowhere", "--http-port", "8000", "--grpc-port", "8001"], "nowhere: no such model repository directory"),
    (["REPO", "--http-port", "8000", "--grpc-port", "8001", "--model-control-mode=explicit"],
     "unknown option --model-control-mode=explicit (tritonserver's own options go after --)"),
])
def test_bad_arguments_get_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "REPO").mkdir()
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"triton_server.sh: {message}")


def cache_info(env: dict[str, str] | None = None) -> dict[str, list[str]]:
    result = run_script("--cache-info", env=env)
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}


def test_the_session_server_used_the_cached_backend_of_this_environment(triton_server) -> None:
    info = cache_info()
    assert info["server"][1] == "ready" and info["backend"][1] == "ready"
    backend = Path(info["backend"][0])
    assert f"--backend-directory={backend}" in (Path("/proc") / str(triton_server.pid) / "cmdline").read_text() \
        .replace("\0", " ")
    import onnxruntime

    # built against the libonnxruntime.so of the onnxruntime wheel this environment runs
    assert Path(info["onnxruntime"][0]).parent == Path(onnxruntime.__file__).parent / "capi"
    assert (backend / "onnxruntime" / "libonnxruntime.so.1").read_bytes() == Path(info["onnxruntime"][0]).read_bytes()
    if VENDOR.is_dir():
        assert info["backend-source"] == ["vendor"]


def test_a_changed_backend_source_or_onnxruntime_library_is_built_again(tmp_path: Path) -> None:
    """The backend's cache key covers the sources, ONNX Runtime's headers and library: change one, and a start
    would build into another folder (--cache-info shows which, without building)."""
    if not (VENDOR / "triton-onnxruntime-backend").is_dir():
        pytest.skip(f"no {VENDOR}")
    base = cache_info()["backend"][0]
    vendor = tmp_path / "vendor"
    shutil.copytree(VENDOR / "triton-onnxruntime-backend", vendor / "triton-onnxruntime-backend")
    shutil.copytree(VENDOR / "onnxruntime-c-api", vendor / "onnxruntime-c-api")
    for path in vendor.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {"RWKV_TRITON_VENDOR": str(vendor)}
    assert cache_info(env)["backend"] == [base, "ready"]  # the same bytes: the same build
    (vendor / "onnxruntime-c-api" / "onnxruntime_c_api.h").open("a").write("\n")
    headers = cache_info(env)["backend"]
    assert headers[0] != base and headers[1] == "missing"
    tarball = next((vendor / "triton-onnxruntime-backend").glob("*.tar.gz"))
    tarball.write_bytes(tarball.read_bytes() + b"\0")
    assert cache_info(env)["backend"][0] not in (base, headers[0])

    # another onnxruntime wheel: a stand-in module whose capi/ holds a library one byte different
    import onnxruntime

    fake = tmp_path / "site" / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    (fake / "__init__.py").write_text(f"__version__ = {onnxruntime.__version__!r}\n")
    library = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    (fake / "capi" / library.name).write_bytes(library.read_bytes() + b"\0")
    other = cache_info({"PYTHONPATH": str(tmp_path / "site")})
    assert other["onnxruntime"] == [str(fake / "capi" / library.name)]
    assert other["backend"][0] != base and other["backend"][1] == "missing"


def test_the_server_listens_on_the_loopback_address_only(triton_server) -> None:
    ports = {triton_server.http_port, triton_server.grpc_port, triton_server.metrics_port}
    listening = {}
    for table in ("tcp", "tcp6"):
        for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port, 16) in ports:
                listening.setdefault(int(port, 16), []).append(address)
    assert sorted(listening) == sorted(ports)  # gRPC listens on ::ffff:127.0.0.1
    assert all(len(addresses) == 1 and addresses[0] in LOOPBACK for addresses in listening.values()), listening
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{triton_server.metrics_port}/metrics", timeout=10).read()
    assert b"nv_inference_count" in metrics or b"nv_cpu_utilization" in metrics


def test_a_repository_that_fails_to_load_stops_the_script_with_the_servers_reason(tmp_path: Path) -> None:
    from tests.helpers.triton_server import skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n')
    (model / "1" / "model.onnx").write_bytes(b"not an onnx model")
    result = run_script(str(tmp_path / "repo"), "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                        timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert "tritonserver exited (1) before it was ready" in result.stderr.splitlines()[-1]
    assert "failed to load 'broken' version 1: Internal: onnx runtime error 7" in result.stderr


def test_sigterm_lets_live_sequences_finish_refuses_new_ones_and_cuts_off_at_the_exit_timeout(
        tmp_path: Path, small_packages) -> None:
    """A second server (the session's stays up): SIGTERM while a sequence is live. Triton refuses a new
    sequence, takes the live one's last request, and exits 0; a sequence never ended holds the server until
    the exit timeout (1 s here), then it exits 1. (The timeout also covers unloading the models after the
    sequences are done, so the first case gets 10 s.)"""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from rwkv_deploy.targets.triton import write_repository
    from tests.helpers.triton_server import skip_reason, start_server

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    write_repository(small_packages["7"], tmp_path / "repo", name="m")
    token = grpcclient.InferInput("token", [1, 1], "INT64")
    token.set_data_from_numpy(np.array([[3]], np.int64))
    for finish, status, exit_timeout in ((True, 0, "10"), (False, 1, "1")):
        server = start_server(tmp_path / "repo", tmp_path / f"log-{finish}",
                              env={"RWKV_TRITON_EXIT_TIMEOUT": exit_timeout})
        try:
            client = grpcclient.InferenceServerClient(server.url)
            client.infer("m", [token], sequence_id=1, sequence_start=True)
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(InferenceServerException, match="Server is stopping"):
                for _ in range(100):  # until the signal has arrived
                    client.infer("m", [token], sequence_id=2, sequence_start=True, sequence_end=True)
            if finish:
                client.infer("m", [token], sequence_id=1, sequence_end=True)
            assert server.process.wait(60) == status, server.log_tail()
        finally:
            kill_group(server.process)
    assert "Exit timeout expired" in (tmp_path / "log-False").read_text()


def test_a_port_in_use_is_refused_before_the_server_starts(triton_server, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    result = run_script(str(tmp_path / "repo"), "--http-port", str(triton_server.http_port), "--grpc-port",
                        str(free_port()))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"triton_server.sh: port {triton_server.http_port} on 127.0.0.1 is " \
        "already in use"
