"""Wall-clock timing of a repeated call: warm-up first, then at least `min_seconds` and `min_calls`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Timing:
    calls: int
    seconds: float

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / self.calls


def time_calls(call: Callable[[], object], min_seconds: float, min_calls: int = 3, max_calls: int = 10_000,
               warmup: int = 1) -> Timing:
    """Run `call` `warmup` times untimed, then until both minimums are met (or `max_calls`)."""
    for _ in range(warmup):
        call()
    calls, start = 0, time.perf_counter()
    while calls < max_calls:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= min_calls and elapsed >= min_seconds:
            break
    return Timing(calls, time.perf_counter() - start)
