"""Running the server: /health and /metrics, a bounded queue (429), a client that goes away frees its slot,
SIGTERM drains (503 for new requests, streams in flight finish) and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.helpers.serve_process import serving, start_serve

ENDLESS = 1_000_000  # max_tokens of a stream that only ends when its client or the server ends it
WAIT_S = 60  # how long a test waits for a state it expects (a bound, never a timing assertion)


@pytest.fixture(scope="module")
def one_slot(serve_pkg, tmp_path_factory):
    """A server with one slot and a queue of one: easy to fill."""
    with serving(tmp_path_factory, [f"tiny={serve_pkg}"], "--max-batch", "1", "--max-queue", "1") as process:
        yield process


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {WAIT_S} s"
        time.sleep(0.05)


class Stream:
    """A streaming completion read in a thread; `close()` drops the connection like a client that goes away."""

    def __init__(self, url: str, max_tokens: int) -> None:
        self.client = httpx.Client(timeout=120)
        self.response = self.client.send(self.client.build_request(
            "POST", f"{url}/v1/completions", json={"model": "tiny", "prompt": "Go on:", "max_tokens": max_tokens,
                                                   "temperature": 0, "stream": True}), stream=True)
        self.events: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
        except (httpx.HTTPError, RuntimeError):
            pass

    def close(self) -> None:
        self.response.close()
        self.client.close()


def test_health_and_metrics(one_slot):
    assert httpx.get(f"{one_slot.url}/health").json() == {"status": "ok", "models": ["tiny"]}
    httpx.post(f"{one_slot.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3})
    response = httpx.get(f"{one_slot.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in ("requests_total", "generated_tokens_total", "queue_depth", "batch_size_bucket",
                 "cache_misses_total", "time_to_first_token_seconds_count", "inter_token_latency_seconds_sum"):
        assert f"rwkv_serve_{name}" in text
    assert one_slot.metric("rwkv_serve_requests_total", endpoint="completions", model="tiny", outcome="ok") >= 1
    assert "/v1/completions" not in one_slot.log.read_text()  # no access log unless --access-log


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(one_slot):
    cancelled = one_slot.metric("rwkv_serve_cancelled_total", model="tiny")
    holder = Stream(one_slot.url, ENDLESS)
    wait_for(lambda: len(holder.events) >= 3, "the first tokens of the stream holding the slot")
    queued: dict = {}
    waiter = threading.Thread(target=lambda: queued.update(r=httpx.post(
        f"{one_slot.url}/v1/completions", json={"model": "tiny", "prompt": "queued", "max_tokens": 4}, timeout=120)))
    waiter.start()
    wait_for(lambda: one_slot.metric("rwkv_serve_queue_depth", model="tiny") == 1, "the second request to queue")
    refused = httpx.post(f"{one_slot.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"

    holder.close()  # the client goes away mid-stream: its slot goes to the queued request
    waiter.join(WAIT_S)
    assert queued["r"].status_code == 200 and queued["r"].json()["usage"]["completion_tokens"] == 4
    wait_for(lambda: one_slot.metric("rwkv_serve_cancelled_total", model="tiny") == cancelled + 1,
             "the scheduler to count the cancelled stream")
    assert one_slot.metric("rwkv_serve_active_requests", model="tiny") == 0


def test_sigterm_drains_the_streams_in_flight_then_exits_0(serve_pkg, tmp_path):
    server = start_serve([f"tiny={serve_pkg}"], tmp_path / "serve.log", "--drain-seconds", "120")
    stream = Stream(server.url, 4000)  # long enough to be in flight at SIGTERM
    wait_for(lambda: len(stream.events) >= 3, "the stream to start")
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 503, "/health to say draining")
    refused = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert server.process.wait(WAIT_S) == 0, server.log_tail()
    stream.thread.join(WAIT_S)
    assert stream.events[-1] == "[DONE]"
    assert json.loads(stream.events[-2])["choices"][0]["finish_reason"] == "length"  # it ran to its end
    assert sum(1 for e in stream.events[:-1] if "error" not in json.loads(e)) == len(stream.events) - 1


def test_streams_still_running_when_the_drain_time_is_up_end_with_503(serve_pkg, tmp_path):
    server = start_serve([f"tiny={serve_pkg}"], tmp_path / "serve.log", "--drain-seconds", "0.5")
    stream = Stream(server.url, ENDLESS)
    wait_for(lambda: len(stream.events) >= 3, "the stream to start")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(WAIT_S) == 0, server.log_tail()
    stream.thread.join(WAIT_S)
    assert stream.events[-1] == "[DONE]"
    assert json.loads(stream.events[-2])["error"]["code"] == "draining"


def test_a_non_streaming_client_that_leaves_frees_its_slot_too(one_slot):
    cancelled = one_slot.metric("rwkv_serve_cancelled_total", model="tiny")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{one_slot.url}/v1/completions", timeout=1.5,
                   json={"model": "tiny", "prompt": "Go on:", "max_tokens": ENDLESS, "temperature": 0})
    wait_for(lambda: one_slot.metric("rwkv_serve_cancelled_total", model="tiny") == cancelled + 1,
             "the scheduler to drop the abandoned request")
    assert one_slot.metric("rwkv_serve_active_requests", model="tiny") == 0
    ok = httpx.post(f"{one_slot.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200
