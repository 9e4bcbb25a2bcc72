"""Load on an OpenAI-compatible server (`rwkv-deploy serve`): N concurrent streaming clients, timed on the client.

For each concurrency in `streams`, N threads each send one streaming /v1/completions request at the same
moment (greedy, `tokens` tokens, a prompt of token ids) and time it: time to first token (request sent -> first
streamed chunk), the gaps between streamed chunks (inter-token latency), and tokens per second over the round
(all generated tokens / the round's wall time). With `repeat_prefix` R every prompt starts with the same R
tokens (a shared system prompt) and two untimed requests put it in the server's prefix cache first; the
cache hit rate comes from the server's /metrics. Only the standard library talks HTTP, so this needs no extra.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from rwkv_deploy.errors import RefusedError

from .triton_load import percentile

PROMPT_ID_RANGE = (1, 256)  # prompt token ids: valid in every RWKV vocabulary (byte tokens of World, bytes)


class ServeLoadError(RefusedError):
    """The server load cannot run: bad options, or no server answering."""


@dataclass(frozen=True)
class ServeLoadOptions:
    url: str  # http://host:port
    model: str
    streams: tuple[int, ...] = (1, 4, 16)
    tokens: int = 128  # generated per request
    prompt_tokens: int = 64  # per request, after the shared prefix
    repeat_prefix: int = 0  # tokens every prompt starts with
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.streams or min(self.streams) < 1:
            raise ServeLoadError(f"--streams {self.streams}: give concurrencies of at least 1")
        if self.tokens < 1 or self.prompt_tokens < 1 or self.repeat_prefix < 0:
            raise ServeLoadError("--tokens and --prompt-tokens must be at least 1, --repeat-prefix at least 0")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ServeLoadError(f"{self.url}: give the server's URL, e.g. http://127.0.0.1:8000")


@dataclass
class RequestTiming:
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class RoundResult:
    streams: int
    requests: int
    errors: int
    generated_tokens: int
    wall_s: float
    tokens_per_s: float
    per_stream_tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    cached_prompt_tokens: int
    cache_hit_rate: float | None  # of this round's requests, from the server's /metrics


@dataclass(frozen=True)
class ServeLoadResult:
    url: str
    model: str
    tokens: int
    prompt_tokens: int
    repeat_prefix: int
    rounds: list[RoundResult]
    error_messages: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout)


def stream_completion(options: ServeLoadOptions, prompt: list[int]) -> RequestTiming:
    """One streaming request, timed; errors are recorded, never raised."""
    timing = RequestTiming()
    body = json.dumps({"model": options.model, "prompt": prompt, "max_tokens": options.tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    connection = _connection(options.url, options.timeout_s)
    try:
        sent = time.perf_counter()
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            timing.error = f"HTTP {response.status}: {response.read(500).decode(errors='replace')}"
            return timing
        last = None
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                timing.error = event["error"].get("message", "error")
                continue
            if event.get("usage"):
                timing.tokens = event["usage"]["completion_tokens"]
                timing.cached_tokens = event["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
            if event.get("choices") and event["choices"][0].get("text"):
                now = time.perf_counter()
                if last is None:
                    timing.ttft_s = now - sent
                else:
                    timing.gaps_s.append(now - last)
                last = now
    except (OSError, http.client.HTTPException, ValueError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return timing


def server_metric(url: str, name: str, model: str) -> float:
    """A counter of the server's /metrics for `model` (0 when absent)."""
    connection = _connection(url, 30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def _prompts(options: ServeLoadOptions, count: int, round_index: int) -> list[list[int]]:
    rng = np.random.default_rng([options.seed, round_index])
    prefix = np.random.default_rng([options.seed, 1 << 20]).integers(*PROMPT_ID_RANGE, size=options.repeat_prefix)
    return [prefix.tolist() + rng.integers(*PROMPT_ID_RANGE, size=options.prompt_tokens).tolist()
            for _ in range(count)]


def run_round(options: ServeLoadOptions, streams: int, round_index: int) -> tuple[RoundResult, list[str]]:
    prompts = _prompts(options, streams, round_index)
    hits = server_metric(options.url, "rwkv_serve_cache_hits_total", options.model)
    misses = server_metric(options.url, "rwkv_serve_cache_misses_total", options.model)
    results: list[RequestTiming | None] = [None] * streams
    start = threading.Barrier(streams)

    def client(i: int) -> None:
        start.wait()
        results[i] = stream_completion(options, prompts[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    done = [r for r in results if r is not None]
    ok = [r for r in done if r.error is None]
    hits = server_metric(options.url, "rwkv_serve_cache_hits_total", options.model) - hits
    misses = server_metric(options.url, "rwkv_serve_cache_misses_total", options.model) - misses
    tokens = sum(r.tokens for r in ok)
    gaps = [g for r in ok for g in r.gaps_s]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    row = RoundResult(
        streams=streams, requests=streams, errors=streams - len(ok), generated_tokens=tokens, wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2), per_stream_tokens_per_s=round(tokens / wall / streams, 2),
        ttft_p50_s=_round4(percentile(ttfts, 50)), ttft_p99_s=_round4(percentile(ttfts, 99)),
        itl_p50_ms=ms(percentile(gaps, 50)),
        itl_p99_ms=ms(percentile(gaps, 99)), cached_prompt_tokens=sum(r.cached_tokens for r in ok),
        cache_hit_rate=round(hits / (hits + misses), 3) if hits + misses else None)
    return row, [r.error for r in done if r.error]


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_serve_load(options: ServeLoadOptions, progress: Callable[[str], None] = lambda _: None) -> ServeLoadResult:
    """Untimed warm-up, then one round per concurrency.

    With a shared prefix the warm-up is two requests that differ after it, sent one after the other: the
    server keeps states at chunk boundaries and where a prompt leaves one it has seen (rounded down to its cut
    granule), so only the second request caches the state at the prefix's end, as a real system prompt gets
    cached once a second conversation starts with it."""
    for prompt in _prompts(options, 2 if options.repeat_prefix else 1, 1 << 16):
        warm = stream_completion(options, prompt)
        if warm.error:
            raise ServeLoadError(f"{options.url}: the warm-up request failed ({warm.error})")
    rounds, errors = [], []
    for index, streams in enumerate(options.streams):
        row, messages = run_round(options, streams, index)
        progress(f"{streams} streams: {row.tokens_per_s} tokens/s, time to first token p50 {row.ttft_p50_s} s")
        rounds.append(row)
        errors += messages
    return ServeLoadResult(options.url, options.model, options.tokens, options.prompt_tokens, options.repeat_prefix,
                           rounds, sorted(set(errors))[:10])


def table(result: ServeLoadResult) -> str:
    """The rounds as a Markdown table."""
    lines = ["| streams | tokens/s | per stream | TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms | cache hits "
             "| errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result.rounds:
        hit = "-" if r.cache_hit_rate is None else f"{r.cache_hit_rate:.0%}"
        lines.append(f"| {r.streams} | {r.tokens_per_s:.1f} | {r.per_stream_tokens_per_s:.1f} "
                     f"| {r.ttft_p50_s or 0:.3f} "
                     f"| {r.ttft_p99_s or 0:.3f} | {r.itl_p50_ms} | {r.itl_p99_ms} | {hit} | {r.errors} |")
    return "\n".join(lines) + "\n"




# -- soak: many requests, some clients leaving mid-stream ------------------------------------------------------
@dataclass(frozen=True)
class SoakResult:
    """A soak's outcome: every request is accounted for as finished, left by its client on purpose, an error
    (with the server's message), or hung (no answer within the timeout)."""

    requests: int
    concurrency: int
    finished: int
    disconnected: int
    errors: dict[str, int]
    hung: int
    wall_s: float
    server_rss_kib_first: int | None
    server_rss_kib_warm: int | None  # the first sample after a tenth of the soak (caches, arenas filled)
    server_rss_kib_last: int | None
    server_rss_kib_max: int | None
    server_active_after: float | None  # rwkv_serve_active_requests once the soak is over (0: every slot freed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _soak_one(options: ServeLoadOptions, prompt: list[int], leave_after: int | None) -> str:
    """'finished', 'disconnected', 'hung' or an error message."""
    body = json.dumps({"model": options.model, "prompt": prompt, "max_tokens": options.tokens, "temperature": 0,
                       "stream": True})
    connection = _connection(options.url, options.timeout_s)
    try:
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return f"HTTP {response.status}: {response.read(300).decode(errors='replace')}"
        chunks, outcome = 0, "no [DONE]"
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                return outcome if outcome != "no [DONE]" else "finished"
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                outcome = event["error"].get("message", "error")
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                return "disconnected"  # close without reading on: the server must free the slot
        return outcome
    except TimeoutError:
        return "hung"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def run_soak(options: ServeLoadOptions, requests: int, concurrency: int, disconnect_fraction: float,
             server_pid: int | None, progress: Callable[[str], None] = lambda _: None) -> SoakResult:
    """`requests` streaming requests from `concurrency` client threads; each leaves after a random number of
    chunks with probability `disconnect_fraction`. Samples the server's RSS when `server_pid` is given."""
    from .server_process import RssSampler

    if requests < 1 or concurrency < 1 or not 0 <= disconnect_fraction <= 1:
        raise ServeLoadError("--soak-requests and --streams must be at least 1, --disconnect-fraction in [0, 1]")
    rng = np.random.default_rng(options.seed)
    plan = [(rng.integers(*PROMPT_ID_RANGE, size=options.prompt_tokens).tolist(),
             int(rng.integers(1, options.tokens + 1)) if rng.random() < disconnect_fraction else None)
            for _ in range(requests)]
    outcomes: dict[str, int] = {}
    lock, next_index = threading.Lock(), [0]

    def worker() -> None:
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= requests:
                return
            outcome = _soak_one(options, *plan[index])
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if (index + 1) % 1000 == 0:
                    progress(f"{index + 1} requests sent")

    sampler = RssSampler(server_pid) if server_pid is not None else None
    began = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - began
    time.sleep(0.5)  # let the scheduler drop the last abandoned slots
    active = server_metric(options.url, "rwkv_serve_active_requests", options.model)
    samples = sampler.samples if sampler is not None else []
    rss = [kib for _, kib in samples]
    warm = next((kib for t, kib in samples if t >= wall / 10), None)
    errors = {k: v for k, v in outcomes.items() if k not in ("finished", "disconnected", "hung")}
    return SoakResult(requests, concurrency, outcomes.get("finished", 0), outcomes.get("disconnected", 0), errors,
                      outcomes.get("hung", 0), round(wall, 2), rss[0] if rss else None, warm, rss[-1] if rss else None,
                      max(rss) if rss else None, active)
