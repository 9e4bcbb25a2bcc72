"""Load on a Triton server that serves a repository written by `rwkv-deploy package --triton`: N concurrent
sequences over gRPC, one token per request (the way a client streams with implicit state), timed per
request on the client.

Each sequence sends a fixed pseudo-random token stream (seeded, so a run can be repeated and checked):
START on its first request, END on its last. Workers are threads, one gRPC client each, `sequences` of them
at a time; a run sends `sequences x tokens` requests, or with `requests` set (a soak) keeps starting new
sequences (new sequence ids, the same token streams in turn) until that many have been sent. Optionally:

- `package`: every answer is compared bit for bit (fp32) with what `rwkv_deploy.runtime` computes for the
  same tokens from the package the repository was made from;
- `server_pid`: the server's resident memory is sampled while the load runs (`rwkv-deploy bench-triton`
  finds the PID from the port when the server runs on this machine).

Nothing is lost silently: every request is counted as answered or as an error with the server's message;
a sequence stops at its first error (its state is then unknown) and is left to the server's idle timeout.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rwkv_deploy.errors import RefusedError

from .server_process import RssSampler, cpu_seconds

MAX_ERROR_KINDS = 10  # distinct error messages kept in the result
MAX_REFERENCE_BYTES = 1 << 30  # the --package check holds the runtime's logits of every stream in memory


class LoadError(RefusedError):
    """The load cannot run: bad options, no tritonclient, or the server or model is not there."""


@dataclass(frozen=True)
class LoadOptions:
    url: str  # host:port of the server's gRPC endpoint
    model: str
    sequences: int = 8  # concurrent sequences (client threads)
    tokens: int = 256  # requests per sequence
    requests: int | None = None  # soak: total requests to send (default: sequences x tokens)
    warmup_tokens: int = 16  # per worker, one untimed sequence first (0: none)
    seed: int = 0
    first_sequence_id: int = 1
    timeout_s: float = 30.0  # per request, on the client
    package: Path | None = None  # check every answer against rwkv_deploy.runtime on this package
    server_pid: int | None = None  # sample this process's RSS during the run
    rss_interval_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("sequences", "tokens"):
            if getattr(self, name) < 1:
                raise LoadError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.requests is not None and self.requests < 1:
            raise LoadError(f"--soak-requests {self.requests}: must be at least 1")
        if self.warmup_tokens < 0:
            raise LoadError(f"--warmup-tokens {self.warmup_tokens}: must not be negative")
        if self.first_sequence_id < 1:
            raise LoadError(f"--first-sequence-id {self.first_sequence_id}: must be at least 1 (0 is no sequence)")
        if not self.timeout_s > 0 or not self.rss_interval_s > 0:
            raise LoadError("--timeout and --rss-interval must be positive")

    @property
    def total_requests(self) -> int:
        return self.requests if self.requests is not None else self.sequences * self.tokens


# -- pure parts -------------------------------------------------------------------------------------------------


def token_streams(count: int, length: int, vocab_size: int, seed: int) -> np.ndarray:
    """`count` token streams of `length` ids in [0, vocab_size), int64, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(count, length), dtype=np.int64)


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    """The q-th percentile (nearest rank, so it is a measured value), None for no values."""
    if len(values) == 0:
        return None
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    rank = max(1, int(np.ceil(q / 100.0 * len(ordered))))
    return float(ordered[rank - 1])


def sequence_plan(total: int, tokens: int) -> list[int]:
    """Lengths of the sequences that send `total` requests, `tokens` each, the last one shorter."""
    full, rest = divmod(total, tokens)
    return [tokens] * full + ([rest] if rest else [])


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the server did between two `get_inference_statistics` answers of one model: requests, batched
    executions (so the mean batch), queue and compute microseconds per request. A field the server left out
    (or sent as something else) counts as 0: the answer is the server's, not ours to trust."""

    def field(parent: Any, key: str) -> Any:
        return parent.get(key, {}) if isinstance(parent, dict) else {}

    def number(parent: Any, key: str) -> float:
        try:
            value = float(parent.get(key, 0)) if isinstance(parent, dict) else 0.0
        except (TypeError, ValueError):
            return 0.0
        return value if math.isfinite(value) else 0.0

    def totals(stats: Any) -> dict[str, float]:
        models = field(stats, "model_stats")
        model = models[0] if isinstance(models, list) and models else {}
        inference = field(model, "inference_stats")
        out = {"inference_count": number(model, "inference_count"), "execution_count": number(model, "execution_count")}
        for part in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            out[f"{part}_count"] = number(field(inference, part), "count")
            out[f"{part}_ns"] = number(field(inference, part), "ns")
        return out

    a, b = totals(before), totals(after)
    d = {k: b[k] - a[k] for k in a}
    requests = d["success_count"] or 1.0
    return {
        "requests": int(d["inference_count"]),
        "failed": int(d["fail_count"]),
        "executions": int(d["execution_count"]),
        "mean_batch": round(d["inference_count"] / d["execution_count"], 3) if d["execution_count"] else None,
        "queue_us_per_request": round(d["queue_ns"] / requests / 1e3, 1),
        "compute_us_per_request": round((d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"])
                                        / requests / 1e3, 1),
        "compute_infer_us_per_execution": round(d["compute_infer_ns"] / d["execution_count"] / 1e3, 1)
        if d["execution_count"] else None,
    }


# -- the result -------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    package: str
    sequences_checked: int = 0
    sequences_identical: int = 0
    mismatched_requests: int = 0
    max_abs_diff: float = 0.0


@dataclass
class RssResult:
    pid: int
    start_kib: int
    end_kib: int
    max_kib: int
    growth_pct: float  # end against start (start = after the warm-up)
    samples: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class LoadResult:
    url: str
    model: str
    sequences: int
    tokens_per_sequence: int
    requests: int  # sent
    answered: int
    errors: int
    error_messages: dict[str, int]
    wall_s: float
    tokens_per_s: float  # answered requests per second of wall time
    latency_ms: dict[str, float | None]  # per request on the client: p50, p90, p99, max, mean
    server: dict[str, Any] | None  # what the server's statistics say about the run
    cpu_ms_per_request: dict[str, float]  # CPU time per request of this client (all its threads) and the server
    check: CheckResult | None
    rss: RssResult | None
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"


# -- running ----------------------------------------------------------------------------------------------------


MAX_ANSWER_BYTES = 64 << 20  # a step's answer is batch x vocab floats (256 KiB at vocab 65536): far below this


def _client(grpcclient: Any, url: str) -> Any:
    """A gRPC client whose answers are capped (a hostile or broken server cannot make us hold gigabytes)."""
    return grpcclient.InferenceServerClient(url, channel_args=[
        ("grpc.max_receive_message_length", MAX_ANSWER_BYTES), ("grpc.max_send_message_length", MAX_ANSWER_BYTES)])


def _grpc() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise LoadError("bench-triton needs Triton's gRPC client: pip install 'rwkv-deploy[triton]' "
                        "(tritonclient[grpc])") from None
    return grpcclient


@dataclass
class _ModelIO:
    token_input: str
    token_datatype: str
    logits_output: str
    vocab_size: int


def _model_io(client: Any, model: str, url: str, timeout_s: float) -> _ModelIO:
    from tritonclient.utils import InferenceServerException

    try:
        if not client.is_model_ready(model, client_timeout=timeout_s):
            raise LoadError(f"{url}: model {model!r} is not ready on this server")
        meta = client.get_model_metadata(model, as_json=True, client_timeout=timeout_s)
    except InferenceServerException as exc:
        raise LoadError(f"{url}: {exc.message() or exc}") from None
    inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
    if len(inputs) != 1 or not outputs or len(outputs[0].get("shape", [])) != 2:
        raise LoadError(f"{url}: model {model!r} is not a `package --triton` step model (one token input, "
                        f"logits [batch, vocab] out)")
    return _ModelIO(inputs[0]["name"], inputs[0]["datatype"], outputs[0]["name"], int(outputs[0]["shape"][1]))


def reference_logits(package: Path, streams: np.ndarray) -> np.ndarray:
    """[stream, step, vocab] fp32 logits of the Python runtime for each stream, stepped at batch 1 from the
    package's initial state, as a client without Triton would."""
    from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend, stream_logits

    backend = OnnxStepBackend(DeploymentPackage.open(package), threads=1)
    return np.stack([stream_logits(backend, stream) for stream in streams])


class _Run:
    """Shared state of the worker threads: the next sequence to start, and what came back."""

    def __init__(self, options: LoadOptions, io: _ModelIO, streams: np.ndarray, reference: np.ndarray | None):
        self.options, self.io, self.streams, self.reference = options, io, streams, reference
        self.plan = sequence_plan(options.total_requests, options.tokens)
        self.lock = threading.Lock()
        self.next_sequence = 0
        self.latencies: list[float] = []
        self.sent = self.answered = 0
        self.errors: Counter[str] = Counter()
        self.check = CheckResult(str(options.package)) if reference is not None else None

    def take(self) -> int | None:
        with self.lock:
            if self.next_sequence >= len(self.plan):
                return None
            self.next_sequence += 1
            return self.next_sequence - 1

    def worker(self, client: Any, sequence_id_base: int) -> None:
        while (index := self.take()) is not None:
            self.run_sequence(client, sequence_id_base + index, index % len(self.streams), self.plan[index])

    def run_sequence(self, client: Any, sequence_id: int, stream: int, length: int, timed: bool = True) -> None:
        from tritonclient.utils import InferenceServerException

        grpcclient = _grpc()
        token = grpcclient.InferInput(self.io.token_input, [1, 1], self.io.token_datatype)
        wanted = [grpcclient.InferRequestedOutput(self.io.logits_output)]
        latencies, answers, mismatched, max_diff = [], 0, 0, 0.0
        error = None
        for step in range(length):
            token.set_data_from_numpy(self.streams[stream, step].reshape(1, 1))
            start = time.perf_counter()
            try:
                result = client.infer(self.options.model, [token], outputs=wanted, sequence_id=sequence_id,
                                      sequence_start=step == 0, sequence_end=step == length - 1,
                                      client_timeout=self.options.timeout_s)
            except InferenceServerException as exc:
                error = f"{exc.status() or 'error'}: {exc.message() or exc}".splitlines()[0]
                break
            latencies.append(time.perf_counter() - start)
            answers += 1
            if self.reference is not None:
                got = result.as_numpy(self.io.logits_output)
                want = self.reference[stream, step]
                if got is None or got.shape != (1, want.shape[0]) or not np.array_equal(got[0], want):
                    mismatched += 1
                    if got is not None and got.shape == (1, want.shape[0]):
                        max_diff = max(max_diff, float(np.max(np.abs(got[0].astype(np.float64) - want))))
                    else:
                        max_diff = float("inf")
        if not timed:
            if error:
                raise LoadError(f"{self.options.url}: warm-up request failed: {error}")
            return
        with self.lock:
            self.latencies.extend(latencies)
            self.sent += answers + (error is not None)
            self.answered += answers
            if error:
                self.errors[error] += 1
            if self.check is not None:
                self.check.sequences_checked += 1
                self.check.sequences_identical += mismatched == 0 and error is None
                self.check.mismatched_requests += mismatched
                self.check.max_abs_diff = max(self.check.max_abs_diff, max_diff)


def run_load(options: LoadOptions, progress: Callable[[str], None] = lambda _: None) -> LoadResult:
    """Run the load described by `options` and measure it (see the module docstring)."""
    grpcclient = _grpc()
    machine = {"loadavg_before": _loadavg()}  # the machine's own load, before this run adds to it
    if options.package is not None and not Path(options.package).is_dir():
        raise LoadError(f"{options.package}: no such package directory")
    try:
        clients = [_client(grpcclient, options.url) for _ in range(options.sequences)]
        io = _model_io(clients[0], options.model, options.url, options.timeout_s)
    except LoadError:
        raise
    except Exception as exc:  # grpc's connection errors come as several types
        raise LoadError(f"{options.url}: cannot reach the server ({type(exc).__name__}: {exc})") from None
    stream_count = min(options.sequences, len(sequence_plan(options.total_requests, options.tokens)))
    streams = token_streams(stream_count, options.tokens, io.vocab_size, options.seed)
    reference = None
    if options.package is not None:
        need = streams.size * io.vocab_size * 4
        if need > MAX_REFERENCE_BYTES:
            raise LoadError(f"--package: the check would hold {need / 2**30:.1f} GiB of reference logits "
                            f"({stream_count} streams x {options.tokens} tokens x {io.vocab_size}); "
                            f"use fewer --tokens or --sequences (at most {MAX_REFERENCE_BYTES / 2**30:.0f} GiB)")
        progress(f"computing the Python runtime's logits for {stream_count} streams x {options.tokens} tokens")
        reference = reference_logits(Path(options.package), streams)
        if reference.shape[-1] != io.vocab_size:
            raise LoadError(f"{options.package}: vocabulary {reference.shape[-1]} is not the model's ({io.vocab_size})")
    run = _Run(options, io, streams, reference)

    warmup_ids = options.first_sequence_id  # then the run's sequences, numbered on from there
    run_ids = warmup_ids + (options.sequences if options.warmup_tokens else 0)
    if options.warmup_tokens:
        progress(f"warm-up: {options.sequences} sequences x {options.warmup_tokens} tokens")
        length = min(options.warmup_tokens, options.tokens)
        _in_threads([lambda c=c, i=i: run.run_sequence(c, warmup_ids + i, i % len(streams), length, timed=False)
                     for i, c in enumerate(clients)])

    stats_before = _settled_stats(clients[0], options.model, options.timeout_s, options.url)
    sampler = RssSampler(options.server_pid, options.rss_interval_s) if options.server_pid else None
    progress(f"load: {options.sequences} concurrent sequences, {options.total_requests} requests")
    cpu_before = _cpu(options.server_pid)
    with sampler or contextlib.nullcontext():
        start = time.perf_counter()
        _in_threads([lambda c=c: run.worker(c, run_ids) for c in clients])
        wall = time.perf_counter() - start
    cpu_after = _cpu(options.server_pid)
    stats_after = _settled_stats(clients[0], options.model, options.timeout_s, options.url)
    for client in clients:
        client.close()

    lat_ms = np.asarray(run.latencies) * 1e3
    rss = None
    if sampler and sampler.samples:
        kib = [k for _, k in sampler.samples]
        rss = RssResult(options.server_pid, kib[0], kib[-1], max(kib), round(100.0 * (kib[-1] - kib[0]) / kib[0], 2),
                        _thin(sampler.samples, 200))
    return LoadResult(
        url=options.url, model=options.model, sequences=options.sequences, tokens_per_sequence=options.tokens,
        requests=run.sent, answered=run.answered, errors=sum(run.errors.values()),
        error_messages=dict(run.errors.most_common(MAX_ERROR_KINDS)), wall_s=round(wall, 3),
        tokens_per_s=round(run.answered / wall, 1) if wall > 0 else 0.0,
        latency_ms={"p50": _round(percentile(lat_ms, 50)), "p90": _round(percentile(lat_ms, 90)),
                    "p99": _round(percentile(lat_ms, 99)), "max": _round(percentile(lat_ms, 100)),
                    "mean": _round(float(lat_ms.mean()) if len(lat_ms) else None)},
        server=stats_delta(stats_before, stats_after), check=run.check, rss=rss,
        cpu_ms_per_request={side: round(1e3 * (cpu_after[side] - cpu_before[side]) / max(run.sent, 1), 3)
                            for side in cpu_before if side in cpu_after},
        machine={"cpus": os.cpu_count(), **machine, "loadavg_after": _loadavg()})


def _settled_stats(client: Any, model: str, timeout_s: float, url: str, wait_s: float = 1.0) -> dict[str, Any]:
    """The model's statistics once they stop changing: Triton counts a request shortly after it has answered
    it, so a read right after the last answer can miss the last few. Every call has the request timeout."""
    from tritonclient.utils import InferenceServerException

    def read() -> dict[str, Any]:
        try:
            return client.get_inference_statistics(model, as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise LoadError(f"{url}: the model's statistics: {exc.message() or exc}") from None

    stats = read()
    deadline = time.perf_counter() + wait_s
    while time.perf_counter() < deadline:
        time.sleep(0.02)
        again = read()
        if again == stats:
            break
        stats = again
    return stats


def _in_threads(calls: list[Callable[[], None]]) -> None:
    """Run each call on its own thread; re-raise the first exception."""
    failures: list[BaseException] = []

    def guarded(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def _thin(samples: list[tuple[float, int]], keep: int) -> list[tuple[float, int]]:
    if len(samples) <= keep:
        return samples
    step = len(samples) / keep
    return [samples[int(i * step)] for i in range(keep - 1)] + [samples[-1]]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cpu(server_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by this process and, when known, by the server: where a request's cost goes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"client": usage.ru_utime + usage.ru_stime}
    if server_pid:
        try:
            out["server"] = cpu_seconds(server_pid)
        except OSError:
            pass
    return out


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
