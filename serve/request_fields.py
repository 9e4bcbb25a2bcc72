"""OpenAI request bodies -> validated settings; every problem is a 400 naming the field.

Unknown fields are refused (400, "unknown field"), so a misspelt setting (`max_token`) never silently does
nothing. OpenAI fields this server does not implement are accepted only at their neutral value (`n: 1`,
`logprobs: false`, `echo: false`, `logit_bias: {}`, `tools: []`, ...) and refused otherwise; `user` and
`metadata` are accepted and ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rwkv_deploy.runtime.generation import MAX_SEED
from rwkv_deploy.runtime.sampling import SamplingError, SamplingParams

from .chat_template import ROLES, Message
from .errors import bad_request
from .sessions import MAX_SESSION_ID

DEFAULT_MAX_TOKENS = {"completions": 16, "chat": 512}  # OpenAI's completions default; chat: a bounded reply
MAX_TOKENS_LIMIT = 1 << 20
MAX_STOP_STRINGS = 16

_SAMPLING = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "penalty_decay")
_COMMON = {"model", "max_tokens", "stop", "seed", "stream", "stream_options", "session_id", "state", "return_state",
           "return_token_ids", "user", "metadata", *_SAMPLING}
# OpenAI fields accepted only at these neutral values (None is always fine)
_NEUTRAL = {"n": (1,), "logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "suffix": ("",),
            "best_of": (1,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none", "auto"),
            "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},)}
_FIELDS = {
    "completions": _COMMON | {"prompt", "n", "logprobs", "echo", "suffix", "best_of", "logit_bias"},
    "chat": _COMMON | {"messages", "max_completion_tokens", "enable_thinking", "n", "logprobs", "top_logprobs",
                       "logit_bias", "tools", "tool_choice", "parallel_tool_calls", "response_format"},
}


@dataclass(frozen=True)
class CompletionRequest:
    """What a /v1/completions or /v1/chat/completions body asks for."""

    endpoint: str  # "completions" or "chat"
    model: str
    prompt: str | list[int] | None  # completions: text, or token ids
    messages: tuple[Message, ...]  # chat
    max_tokens: int
    params: SamplingParams
    stop: tuple[str, ...] | None  # None: not given (chat then stops at the next user turn)
    seed: int | None
    stream: bool
    include_usage: bool
    session_id: str | None
    state: str | None  # base64 of a state file
    return_state: bool
    return_token_ids: bool
    enable_thinking: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else: not UTF-8 (JSON's only encoding on the wire, RFC 8259
    section 8.1; json.loads alone would also take UTF-16 and UTF-32), invalid JSON, NaN, a string holding an
    unpaired surrogate (a "\\ud800" escape: no text can contain it), too deep, not an object."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})",
                          code="invalid_json") from None
    try:
        body = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise bad_request("the request body is not valid JSON (nested too deeply)", code="invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    _check_strings(body)
    return body


def _check_strings(body: dict[str, Any]) -> None:
    """Every key and string value encodes as UTF-8 (walked without recursion: json.loads bounds the depth)."""
    pending: list[Any] = [body]
    while pending:
        value = pending.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as exc:  # the first unpaired surrogate is text[exc.start]
                        raise bad_request("the request body holds a string with an unpaired surrogate escape "
                                          f"(\\u{ord(text[exc.start]):04x})", code="invalid_json") from None
            if isinstance(item, (dict, list)):
                pending.append(item)


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {json.dumps(value)[:40]}", name, "invalid_type")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be a whole number, got {json.dumps(value)[:40]}", name, "invalid_type")
    if not low <= value <= high:
        raise bad_request(f"{name} must be in {low}..{high}, got {value}", name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {json.dumps(value)[:40]}", name, "invalid_type")
    return value


def _string(body: dict, name: str, max_length: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {json.dumps(value)[:40]}", name, "invalid_type")
    if max_length is not None and not 0 < len(value) <= max_length:
        raise bad_request(f"{name} must be 1..{max_length} characters", name)
    return value


def _stop(body: dict) -> tuple[str, ...] | None:
    value = body.get("stop")
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_request("stop must be a string or a list of strings", "stop", "invalid_type")
    if len(items) > MAX_STOP_STRINGS or any(len(s) > 256 for s in items):
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} strings of at most 256 characters", "stop")
    return tuple(s for s in items if s)


def _check_fields(body: dict, endpoint: str) -> None:
    for name in body:
        if name not in _FIELDS[endpoint]:
            raise bad_request(f"unknown field {name!r} (this server refuses fields it does not know)", name,
                              "unknown_field")
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and name in body and not any(value == n and type(value) is type(n) for n in neutral):
            raise bad_request(f"{name}={json.dumps(value)[:60]} is not supported by this server (only "
                              f"{' or '.join(json.dumps(n) for n in neutral)})", name, "unsupported_value")


def _prompt(body: dict) -> str | list[int]:
    value = body.get("prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        if not value:
            raise bad_request("prompt is empty: the model needs at least one token to continue from", "prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return list(value)
    raise bad_request("prompt must be a non-empty string or a non-empty list of token ids (one prompt per "
                      "request)", "prompt", "invalid_type")


def _messages(body: dict) -> tuple[Message, ...]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of {role, content}", "messages", "invalid_type")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise bad_request(f"messages[{i}] must be an object with role system, user or assistant", "messages",
                              "invalid_type")
        content = item.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad_request(f"messages[{i}].content parts must be text parts", "messages", "invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string", "messages", "invalid_type")
        extra = set(item) - {"role", "content", "name"}
        if extra:
            raise bad_request(f"messages[{i}] has fields this server does not support: {', '.join(sorted(extra))}",
                              "messages", "unknown_field")
        messages.append(Message(item["role"], content))
    if messages[-1].role == "assistant":
        raise bad_request("the last message must be a user or system turn (the reply comes next)", "messages")
    return tuple(messages)


def parse_request(body: dict[str, Any], endpoint: str) -> CompletionRequest:
    """The request's settings, or a 400 naming the first bad field."""
    _check_fields(body, endpoint)
    model = _string(body, "model")
    if model is None:
        raise bad_request("model is required", "model", "missing_field")
    try:
        params = SamplingParams(_number(body, "temperature", 1.0), _number(body, "top_p", 1.0),
                                _integer(body, "top_k", 0, 0, 1 << 31), _number(body, "presence_penalty", 0.0),
                                _number(body, "frequency_penalty", 0.0), _number(body, "penalty_decay", 1.0))
    except SamplingError as exc:
        raise bad_request(str(exc)) from None
    max_tokens = _integer(body, "max_tokens", None, 0, MAX_TOKENS_LIMIT)
    if endpoint == "chat":
        alias = _integer(body, "max_completion_tokens", None, 0, MAX_TOKENS_LIMIT)
        max_tokens = max_tokens if max_tokens is not None else alias
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise bad_request("stream_options must be an object with include_usage only", "stream_options")
    return CompletionRequest(
        endpoint=endpoint, model=model,
        prompt=_prompt(body) if endpoint == "completions" else None,
        messages=_messages(body) if endpoint == "chat" else (),
        max_tokens=DEFAULT_MAX_TOKENS[endpoint] if max_tokens is None else max_tokens,
        params=params, stop=_stop(body), seed=_integer(body, "seed", None, 0, MAX_SEED),
        stream=_boolean(body, "stream", False),
        include_usage=_boolean(options or {}, "include_usage", False),
        session_id=_string(body, "session_id", MAX_SESSION_ID), state=_string(body, "state"),
        return_state=_boolean(body, "return_state", False),
        return_token_ids=_boolean(body, "return_token_ids", False),
        enable_thinking=_boolean(body, "enable_thinking", True))
