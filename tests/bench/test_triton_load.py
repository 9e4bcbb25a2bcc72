"""`rwkv-deploy bench-triton`: load on a real Triton server (the session's, tests/conftest.py), and its parts.

Only what the tool reports is checked, never how fast anything was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rwkv_deploy.bench.server_process import cpu_seconds, listening_pid, rss_kib
from rwkv_deploy.bench.triton_load import LoadError, LoadOptions, percentile, sequence_plan, stats_delta, token_streams
from rwkv_deploy.cli.main import app
from rwkv_deploy.targets.triton import BatchingOptions

pytestmark = pytest.mark.slow  # a real Triton server and exported packages

runner = CliRunner()


# -- pure parts -------------------------------------------------------------------------------------------------


def test_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [percentile(values, q) for q in (0, 20, 50, 90, 99, 100)] == [1.0, 1.0, 3.0, 5.0, 5.0, 5.0]
    assert percentile(list(range(1, 101)), 99) == 99 and percentile([], 50) is None


def test_sequence_plan_sends_exactly_the_requests_asked_for() -> None:
    assert sequence_plan(10, 4) == [4, 4, 2] and sequence_plan(8, 4) == [4, 4] and sequence_plan(3, 4) == [3]


def test_token_streams_are_reproducible_and_inside_the_vocabulary() -> None:
    a, b = token_streams(3, 50, 17, seed=4), token_streams(3, 50, 17, seed=4)
    assert a.shape == (3, 50) and a.dtype == np.int64 and (a == b).all()
    assert a.min() >= 0 and a.max() < 17 and not (a[0] == a[1]).all()


def test_stats_delta_gives_what_the_server_did_between_two_answers() -> None:
    def stats(inferences: int, executions: int, queue_ns: int, infer_ns: int) -> dict:
        return {"model_stats": [{"inference_count": str(inferences), "execution_count": str(executions),
                                 "inference_stats": {"success": {"count": str(inferences)},
                                                     "queue": {"ns": str(queue_ns)},
                                                     "compute_infer": {"ns": str(infer_ns)}}}]}

    delta = stats_delta(stats(10, 5, 1_000, 50_000), stats(110, 30, 201_000, 1_050_000))
    assert delta["requests"] == 100 and delta["executions"] == 25 and delta["mean_batch"] == 4.0
    assert delta["queue_us_per_request"] == 2.0 and delta["compute_infer_us_per_execution"] == 40.0


@pytest.mark.parametrize("kwargs, message", [
    ({"sequences": 0}, "--sequences 0"), ({"tokens": 0}, "--tokens 0"), ({"requests": 0}, "--soak-requests 0"),
    ({"first_sequence_id": 0}, "--first-sequence-id 0"), ({"timeout_s": 0}, "--timeout"),
])
def test_bad_load_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        LoadOptions("127.0.0.1:1", "m", **kwargs)


def test_the_server_process_is_found_from_its_port_in_proc(tmp_path: Path) -> None:
    """A /proc laid out as Linux does: the socket's inode in net/tcp6, and a process holding it as an fd."""
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (tmp_path / "net" / "tcp").write_text(header + "   0: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 "
                                          "00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n")
    (tmp_path / "net" / "tcp6").write_text(header + "   0: 0000000000000000FFFF00000100007F:1F40 "
                                           "00000000000000000000000000000000:0000 0A 00000000:00000000 "
                                           "00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n")
    for pid, inode in ((41, 111), (42, 222)):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        os.symlink(f"socket:[{inode}]", tmp_path / str(pid) / "fd" / "7")
    (tmp_path / "42" / "status").write_text("Name:\ttritonserver\nVmRSS:\t  123456 kB\n")
    ticks = os.sysconf("SC_CLK_TCK")
    (tmp_path / "42" / "stat").write_text(f"42 (triton server) S 1 42 42 0 -1 4194560 1 0 0 0 {3 * ticks} {ticks} "
                                          "0 0 20 0 30 0 1 0 0 0\n")  # a name with a space, as comm may have
    assert listening_pid(0x1F40, tmp_path) == 42 and listening_pid(0x1F41, tmp_path) == 41
    assert listening_pid(9, tmp_path) is None
    assert rss_kib(42, tmp_path) == 123456 and cpu_seconds(42, tmp_path) == 4.0


# -- against the real server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(triton_server, small_packages) -> tuple[str, Path]:
    return triton_server.serve(small_packages["7"], "bench-v7"), small_packages["7"]


def bench(*args: str) -> tuple[int, dict | str]:
    result = runner.invoke(app, ["bench-triton", *args, "--quiet"])
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.output


def test_a_soak_answers_every_request_like_the_python_runtime_and_samples_the_servers_memory(
        triton_server, served, tmp_path: Path) -> None:
    name, package = served
    first = triton_server.sequence_ids(100)[0]  # the run's sequence ids: warm-up 4, then 13
    code, result = bench(triton_server.url, "--model", name, "--sequences", "4", "--tokens", "32",
                         "--soak-requests", "400", "--package", str(package), "--first-sequence-id", str(first),
                         "--warmup-tokens", "4", "--rss-interval", "0.05", "-o", str(tmp_path / "soak.json"))
    assert code == 0, result
    assert json.loads((tmp_path / "soak.json").read_text()) == result
    assert (result["requests"], result["answered"], result["errors"], result["error_messages"]) == (400, 400, 0, {})
    assert result["tokens_per_s"] > 0 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["check"]["sequences_checked"] == result["check"]["sequences_identical"] == 13  # 12 x 32 + 16
    assert result["check"]["mismatched_requests"] == 0
    assert result["rss"]["pid"] == triton_server.pid  # found from the gRPC port
    assert len(result["rss"]["samples"]) >= 2 and result["rss"]["start_kib"] > 0
    assert result["server"]["requests"] == 400 and result["server"]["failed"] == 0
    assert result["cpu_ms_per_request"]["client"] > 0 and result["cpu_ms_per_request"]["server"] > 0


def test_answers_from_another_model_fail_the_check(triton_server, served, small_packages) -> None:
    name, _ = served
    first = triton_server.sequence_ids(10)[0]
    code, result = bench(triton_server.url, "--model", name, "--sequences", "2", "--tokens", "3",
                         "--package", str(small_packages["7-external"]), "--first-sequence-id", str(first))
    assert code == 1
    assert result["check"]["sequences_identical"] == 0 and result["check"]["mismatched_requests"] == 6
    assert result["check"]["max_abs_diff"] > 0 and result["errors"] == 0


def test_refused_requests_are_counted_with_their_message(triton_server, small_packages) -> None:
    """A model that waits 2 s for a second sequence to batch with, and a client that gives up after 0.2 s."""
    name = triton_server.serve(small_packages["7"], "bench-lonely", batching=BatchingOptions(
        max_batch_size=2, preferred_batch_sizes=(2,), max_queue_delay_us=2_000_000, sequence_idle_us=1_000_000))
    first = triton_server.sequence_ids(10)[0]
    code, result = bench(triton_server.url, "--model", name, "--sequences", "1", "--tokens", "5", "--timeout", "0.2",
                         "--warmup-tokens", "0", "--first-sequence-id", str(first))
    assert code == 1
    assert (result["requests"], result["answered"], result["errors"]) == (1, 0, 1)  # the sequence stops there
    (message,) = result["error_messages"]
    assert "DEADLINE_EXCEEDED" in message and result["tokens_per_s"] == 0


@pytest.mark.parametrize("model, url, args, message", [
    ("nope", None, [], "model 'nope' is not ready on this server"),
    (None, "127.0.0.1:9", [], "127.0.0.1:9:"),
    (None, None, ["--sequences", "64", "--tokens", "20000", "--package", "."],
     "--package: the check would hold 1.2 GiB of reference logits (64 streams x 20000 tokens x 256)"),
])
def test_what_cannot_run_is_one_line(triton_server, served, model, url, args, message) -> None:
    code, output = bench(url or triton_server.url, "--model", model or served[0], "--timeout", "5", *args)
    assert code == 2 and isinstance(output, str)
    (line,) = output.strip().splitlines()
    assert line.startswith("error: ") and message in line
