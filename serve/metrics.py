"""Counters, gauges and histograms in Prometheus' text exposition format (GET /metrics), thread-safe.

Names start with `rwkv_serve_`; every series has a `model` label (the model id)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_HELP = {
    "requests_total": ("counter", "requests finished, by endpoint and outcome (ok, cancelled or error status)"),
    "prompt_tokens_total": ("counter", "prompt tokens of finished requests"),
    "prefilled_tokens_total": ("counter", "prompt tokens run through the model (cached ones are not)"),
    "generated_tokens_total": ("counter", "tokens generated"),
    "cancelled_total": ("counter", "requests whose client went away; their slot was freed at the next step"),
    "cache_hits_total": ("counter", "requests that continued from a cached prefix state"),
    "cache_misses_total": ("counter", "requests that could use the prefix cache and found nothing"),
    "cache_hit_tokens_total": ("counter", "prompt tokens not prefilled thanks to the prefix cache"),
    "queue_depth": ("gauge", "requests waiting for a slot"),
    "active_requests": ("gauge", "requests holding a slot (prefilling or decoding)"),
    "cache_bytes": ("gauge", "bytes held by the prefix cache"),
    "cache_entries": ("gauge", "states held by the prefix cache"),
    "sessions": ("gauge", "stored session states"),
    "batch_size": ("histogram", "rows per decode step"),
    "prefill_batch_size": ("histogram", "rows per prefill call (requests whose next chunks have one length)"),
    "time_to_first_token_seconds": ("histogram", "from a request's arrival to its first generated token"),
    "inter_token_latency_seconds": ("histogram", "between consecutive generated tokens of a request"),
}


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[tuple, list[float]]] = defaultdict(dict)

    def add(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = BATCH_BUCKETS if name.endswith("batch_size") else LATENCY_BUCKETS
        with self._lock:
            series = self._histograms[name].setdefault(tuple(sorted(labels.items())), [0.0] * (len(buckets) + 2))
            for i, bound in enumerate(buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1  # count
            series[-1] += value  # sum

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, text) in _HELP.items():
                full = f"rwkv_serve_{name}"
                lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
                if kind != "histogram":
                    for labels, value in sorted(self._values.get(name, {}).items()):
                        lines.append(f"{full}{_labels(dict(labels))} {value:g}")
                    continue
                buckets = BATCH_BUCKETS if name.endswith("batch_size") else LATENCY_BUCKETS
                for labels, series in sorted(self._histograms.get(name, {}).items()):
                    base = dict(labels)
                    for bound, count in zip(buckets, series):
                        lines.append(f"{full}_bucket{_labels({**base, 'le': f'{bound:g}'})} {count:g}")
                    lines.append(f"{full}_bucket{_labels({**base, 'le': '+Inf'})} {series[-2]:g}")
                    lines.append(f"{full}_count{_labels(base)} {series[-2]:g}")
                    lines.append(f"{full}_sum{_labels(base)} {series[-1]:g}")
        return "\n".join(lines) + "\n"
