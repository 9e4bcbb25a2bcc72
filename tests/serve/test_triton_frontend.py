"""`serve PKG --triton HOST:PORT --model NAME`: the server as a front end to the real Triton server of the test
session, the state held by Triton's sequence batcher; concurrent greedy requests equal the runtime's."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.helpers.serve_process import serving, start_serve
from tests.serve.conftest import oracle

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture(scope="module")
def front_end(shared_package, triton_server, tmp_path_factory):
    from tests.helpers.small_packages import shared

    package = shared(shared_package, "7", prefill=False)  # Triton runs the step graph only
    name = triton_server.serve(package, "serve_front_end")
    with serving(tmp_path_factory, [f"tiny={package}"], "--triton", triton_server.url, "--model", name,
                          "--max-batch", "4") as process:
        yield package, process


def test_concurrent_requests_through_triton_equal_the_runtime(front_end):
    package, server = front_end
    prompts = [f"Front end {i}: " + "abc " * i for i in range(4)]
    got: dict[str, dict] = {}

    def ask(prompt: str) -> None:
        got[prompt] = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0, "return_token_ids": True}).json()

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    generator = oracle(package)
    for prompt in prompts:
        want = generator.generate(prompt, 12, temperature=0)
        assert got[prompt]["token_ids"] == want.token_ids and got[prompt]["choices"][0]["text"] == want.text


def test_state_features_are_refused_when_triton_holds_the_state(front_end):
    _, server = front_end
    for extra in ({"session_id": "s"}, {"return_state": True}):
        response = httpx.post(f"{server.url}/v1/completions", timeout=30,
                              json={"model": "tiny", "prompt": "x", "max_tokens": 2, **extra})
        assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_value"


def test_a_batch_larger_than_triton_takes_is_refused_at_start(front_end, triton_server, tmp_path):
    package, _ = front_end
    with pytest.raises(AssertionError, match="lower --max-batch"):
        start_serve([f"tiny={package}"], tmp_path / "serve.log", "--triton", triton_server.url, "--model",
                    "serve_front_end", "--max-batch", "1000")
