"""Stage-by-stage progress on stderr for long steps (export, validate), with elapsed time per stage."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def stage_printer(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    start = time.perf_counter()
    last = [start, None]

    def report(stage: str) -> None:
        now = time.perf_counter()
        if enabled and last[1] is not None:
            print(f"  done in {now - last[0]:.1f}s", file=sys.stderr)
        if enabled:
            print(f"[{now - start:6.1f}s] {stage} ...", file=sys.stderr, end="", flush=True)
        last[0], last[1] = now, stage

    try:
        yield report
    except BaseException:
        if enabled and last[1] is not None:  # end the open stage's line, so the error gets a line of its own
            print("  failed", file=sys.stderr, flush=True)
        raise
    if enabled and last[1] is not None:
        print(f"  done in {time.perf_counter() - last[0]:.1f}s", file=sys.stderr)
