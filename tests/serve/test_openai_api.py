"""The OpenAI API of `rwkv-deploy serve`, through the official `openai` client and raw HTTP: answers equal the
runtime's own generation, errors are OpenAI-shaped with the right status."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from rwkv_deploy.serve import chat_template
from rwkv_deploy.serve.chat_template import Message
from tests.helpers.serve_process import serving
from tests.serve.conftest import oracle

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(serve_pkg, tmp_path_factory):
    options = ("--max-prompt-tokens", "300", "--max-body-mib", "0.25")
    with serving(tmp_path_factory, [f"{MODEL}={serve_pkg}"], *options) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def generator(serve_pkg):
    return oracle(serve_pkg)


def test_models_lists_the_package_under_its_name(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_completion_is_the_runtimes(client, generator):
    want = generator.generate("The quick brown fox", 24, temperature=0)
    got = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=24, temperature=0,
                                    extra_body={"return_token_ids": True})
    assert got.choices[0].text == want.text
    assert got.model_extra["token_ids"] == want.token_ids  # an RWKV extra, asked for with return_token_ids
    assert got.choices[0].finish_reason == want.finish_reason == "length"
    assert got.usage.prompt_tokens == 19 and got.usage.completion_tokens == 24 and got.usage.total_tokens == 43


def test_token_ids_come_back_when_asked(server, generator):
    want = generator.generate("abc", 10, temperature=0)
    body = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 10,
                                                            "temperature": 0, "return_token_ids": True}).json()
    assert body["token_ids"] == want.token_ids


def test_streamed_completion_is_the_same_text(client, generator):
    want = generator.generate("Once upon", 30, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30


def test_sampling_with_a_seed_penalties_and_decay_is_the_runtimes(client, generator):
    settings = dict(temperature=0.8, top_p=0.9, top_k=40, presence_penalty=0.4, frequency_penalty=0.3, seed=7)
    want = generator.generate("Seeded", 40, penalty_decay=0.9, **settings)
    got = client.completions.create(model=MODEL, prompt="Seeded", max_tokens=40, extra_body={"top_k": 40,
                                    "penalty_decay": 0.9}, **{k: v for k, v in settings.items() if k != "top_k"})
    assert got.choices[0].text == want.text


def test_stop_strings_cut_the_text_like_the_runtime(client, generator):
    free = generator.generate("stop here", 40, temperature=0).text
    stop = free[10:12]  # a piece that occurs in the free-running text
    want = generator.generate("stop here", 40, temperature=0, stop_strings=[stop])
    got = client.completions.create(model=MODEL, prompt="stop here", max_tokens=40, temperature=0, stop=[stop])
    assert got.choices[0].text == want.text and stop not in got.choices[0].text
    assert got.choices[0].finish_reason == "stop"


def test_chat_uses_the_world_template(client, generator):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nthere"}]
    prompt = chat_template.render("world", [Message(**m) for m in messages])
    assert prompt == "System: Be brief.\n\nUser: Hi\nthere\n\nAssistant:"
    want = generator.generate(prompt, 20, temperature=0, stop_strings=chat_template.CHAT_STOP)
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert got.choices[0].message.content == want.text
    assert got.choices[0].message.role == "assistant"
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                   stream=True))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text
    assert streamed[-1].choices[0].finish_reason == want.finish_reason


def test_the_client_sees_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="n=2 is not supported"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, n=2)


def _post(server, path: str, content: bytes | str, status: int) -> dict:
    response = httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"},
                          timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    return error


@pytest.mark.parametrize("body, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"model": "tiny", "prompt": "x", "temperature": NaN}', "invalid_json"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": "5"}), "invalid_type"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": True}), "invalid_type"),
    (json.dumps({"model": "tiny", "prompt": 5}), "invalid_type"),
    (json.dumps({"model": "tiny", "prompt": ""}), "invalid_value"),
    (json.dumps({"model": "tiny", "prompt": "x", "temperature": -1}), "invalid_value"),
    (json.dumps({"model": "tiny", "prompt": "x", "stop": [1]}), "invalid_type"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_token": 5}), "unknown_field"),
    (json.dumps({"model": "tiny", "prompt": [300]}), "invalid_value"),
    (json.dumps({"prompt": "x"}), "missing_field"),
])
def test_bad_completion_requests_get_400(server, body, code):
    assert _post(server, "/v1/completions", body, 400)["code"] == code


def test_bad_chat_requests_get_400(server):
    assert _post(server, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}), 400)["param"] == "messages"
    bad_role = {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}
    assert _post(server, "/v1/chat/completions", json.dumps(bad_role), 400)["code"] == "invalid_type"
    tools = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
    assert _post(server, "/v1/chat/completions", json.dumps(tools), 400)["code"] == "unsupported_value"


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "n": 1, "logprobs": None, "echo": False, "user": "u"}
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=30).status_code == 200


def test_sizes_beyond_the_limits_get_413(server):
    huge = json.dumps({"model": MODEL, "prompt": "x" * 400_000})
    assert _post(server, "/v1/completions", huge, 413)["code"] == "body_too_large"
    long_prompt = json.dumps({"model": MODEL, "prompt": "y" * 301, "max_tokens": 1})
    assert _post(server, "/v1/completions", long_prompt, 413)["code"] == "prompt_too_long"


def test_unknown_routes_and_methods_are_openai_shaped(server):
    assert httpx.get(f"{server.url}/v2/nothing").json()["error"]["code"] == "not_found"
    response = httpx.get(f"{server.url}/v1/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
