"""State across requests: the prefix cache (a hit changes nothing but the work), sessions (interleaved sessions
equal their solo conversations, nothing leaks between them) and states passed in and out as base64 state files."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import pytest

from rwkv_deploy.runtime import DeploymentPackage, RecurrentState
from rwkv_deploy.serve import chat_template
from rwkv_deploy.serve.chat_template import Message
from tests.helpers.serve_process import serving
from tests.serve.conftest import oracle

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

CHUNK = 16


@pytest.fixture(scope="module")
def server(serve_pkg, tmp_path_factory):
    with serving(tmp_path_factory, [f"tiny={serve_pkg}"], "--prefill-chunk", str(CHUNK)) as process:
        yield process


@pytest.fixture(scope="module")
def generator(serve_pkg):
    return oracle(serve_pkg, prefill_chunk=CHUNK)


def complete(server, **fields) -> dict:
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "temperature": 0, **fields},
                          timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def chat(server, messages, **fields) -> dict:
    response = httpx.post(f"{server.url}/v1/chat/completions",
                          json={"model": "tiny", "temperature": 0, "messages": messages, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_repeated_system_prompt_is_not_prefilled_again(server, generator):
    system = "You are a careful assistant. " * 4  # 116 bytes: 7 whole chunks of 16
    hits = server.metric("rwkv_serve_cache_hits_total", model="tiny")
    prefilled = server.metric("rwkv_serve_prefilled_tokens_total", model="tiny")
    first = complete(server, prompt=system + "Question one?", max_tokens=20)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    second = complete(server, prompt=system + "Another question?", max_tokens=20)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 112
    assert server.metric("rwkv_serve_cache_hits_total", model="tiny") == hits + 1
    assert server.metric("rwkv_serve_prefilled_tokens_total", model="tiny") == prefilled + 129 + (133 - 112)
    for body, question in ((first, "Question one?"), (second, "Another question?")):  # as uncached runs
        assert body["choices"][0]["text"] == generator.generate(system + question, 20, temperature=0).text


def test_a_shared_prefix_off_the_chunk_boundaries_is_cached_where_prompts_diverge(serve_pkg, tmp_path_factory):
    """Chunks of 64: the second prompt sharing the system prompt stores the state where the two part (112, the
    last multiple of 16 in the shared 116 bytes), and later ones start there; all equal uncached runs."""
    system = "You are a careful assistant. " * 4
    questions = ("Question one?", "Another question?", "A third question?", "And a fourth?")
    with serving(tmp_path_factory, [f"tiny={serve_pkg}"], "--prefill-chunk", "64") as process:
        bodies = [complete(process, prompt=system + question, max_tokens=12) for question in questions]
    assert [b["usage"]["prompt_tokens_details"]["cached_tokens"] for b in bodies] == [0, 64, 112, 112]
    generator = oracle(serve_pkg, prefill_chunk=64)
    for body, question in zip(bodies, questions):
        assert body["choices"][0]["text"] == generator.generate(system + question, 12, temperature=0).text


def test_a_growing_chat_reuses_its_history(server, generator):
    history = [Message("system", "Answer in one line."), Message("user", "What is RWKV and why is it fast?")]
    first = chat(server, [m.__dict__ for m in history], max_tokens=24)
    history += [Message("assistant", first["choices"][0]["message"]["content"]), Message("user", "And then?")]
    second = chat(server, [m.__dict__ for m in history], max_tokens=24)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 48
    prompt = chat_template.render("world", history)
    want = generator.generate(prompt, 24, temperature=0, stop_strings=chat_template.CHAT_STOP)
    assert second["choices"][0]["message"]["content"] == want.text


def _solo_completion_turns(generator, turns, max_tokens):
    state, texts = None, []
    for prompt in turns:
        result = generator.generate(prompt, max_tokens, temperature=0, state=state)
        state, texts = result.state, texts + [result.text]
    return texts


def test_interleaved_sessions_equal_their_solo_conversations(server, generator):
    conversations = {f"s-{i}": [f"Conversation {i} begins.", f" Turn two of {i}:", " And three."] for i in range(3)}
    got = {sid: [] for sid in conversations}
    for turn in range(3):  # all sessions' turn 1 at once, then all turn 2 ...
        threads = [threading.Thread(target=lambda sid=sid: got[sid].append(
            complete(server, prompt=conversations[sid][turn], max_tokens=12, session_id=sid)["choices"][0]["text"]))
            for sid in conversations]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    for sid, turns in conversations.items():
        assert got[sid] == _solo_completion_turns(generator, turns, 12), sid
    assert httpx.delete(f"{server.url}/v1/sessions/s-0").json()["deleted"] is True
    restarted = complete(server, prompt=" And three.", max_tokens=12, session_id="s-0")["choices"][0]["text"]
    assert restarted == generator.generate(" And three.", 12, temperature=0).text  # a forgotten session starts fresh


def test_a_chat_session_continues_without_resending_history(server, generator):
    first = chat(server, [{"role": "user", "content": "Tell me a story."}], max_tokens=16, session_id="chat-a")
    reply = first["choices"][0]["message"]["content"]
    second = chat(server, [{"role": "user", "content": "Shorter."}], max_tokens=16, session_id="chat-a")
    # the session fed: prompt 1, then the reply as the template writes it, then the new turn
    prompt1 = chat_template.render("world", [Message("user", "Tell me a story.")])
    state = generator.prefill(generator.tokenizer.encode(prompt1))[1]
    state = generator.prefill(generator.tokenizer.encode(chat_template.assistant_tail("world", reply)), state)[1]
    want = generator.generate(chat_template.render("world", [Message("user", "Shorter.")]), 16, temperature=0,
                              stop_strings=chat_template.CHAT_STOP, state=state)
    assert second["choices"][0]["message"]["content"] == want.text
    assert second["usage"]["prompt_tokens"] == len("User: Shorter.\n\nAssistant:")


def test_a_state_goes_out_and_comes_back(server, generator, serve_pkg, tmp_path):
    first = complete(server, prompt="Stateless one.", max_tokens=10, return_state=True)
    solo = generator.generate("Stateless one.", 10, temperature=0)
    path = tmp_path / "state.npz"
    path.write_bytes(base64.b64decode(first["state"]))
    returned = RecurrentState.load(path, DeploymentPackage.open(serve_pkg).manifest)  # the state-file format
    for got, want in zip(returned.values, solo.state.values):
        np.testing.assert_array_equal(got, want)
    second = complete(server, prompt=" Two.", max_tokens=10, state=first["state"])
    assert second["choices"][0]["text"] == generator.generate(" Two.", 10, temperature=0, state=solo.state).text
    assert "state" not in second


def test_bad_states_are_refused(server, bundled_pkg, tmp_path):
    def post(state: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "x", "max_tokens": 1, "state": state})

    assert post("not base64!").status_code == 400
    junk = post(base64.b64encode(b"junk").decode())
    assert junk.status_code == 400 and junk.json()["error"]["param"] == "state"
    other = DeploymentPackage.open(bundled_pkg).fresh_state(1)
    other.save(tmp_path / "other.npz")
    response = post(base64.b64encode((tmp_path / "other.npz").read_bytes()).decode())
    assert response.status_code == 400 and "another model" in response.json()["error"]["message"]
    both = httpx.post(f"{server.url}/v1/completions", timeout=30, json={
        "model": "tiny", "prompt": "x", "state": base64.b64encode(b"x").decode(), "session_id": "s"})
    assert both.status_code == 400
