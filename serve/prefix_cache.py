"""States after prompt prefixes, kept so a repeated system prompt or a growing chat is not prefilled again.

Entries sit at prefill-chunk boundaries only (multiples of the chunk length, counted from a fresh state), keyed
by the token ids up to there: a request that finds one continues from it with the same chunks an uncached run
would feed after that point, so its output is exactly the uncached one. Least recently used entries go first
once the entries' bytes (state and logits) pass the budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rwkv_deploy.runtime.state import RecurrentState, host


@dataclass(frozen=True)
class CachedPrefix:
    tokens: int  # how many prompt tokens the state has consumed
    state: RecurrentState  # batch 1, host memory, never changed (the scheduler copies before stepping from it)
    logits: np.ndarray  # [vocab] after the last of those tokens


def _key(tokens: Sequence[int]) -> bytes:
    return np.asarray(tokens, np.int64).tobytes()


def _nbytes(state: RecurrentState, logits: np.ndarray) -> int:
    return sum(host(v).nbytes for v in state.values) + logits.nbytes


class PrefixCache:
    """LRU map from token-id prefixes (at multiples of `chunk`) to states, bounded by `max_bytes`."""

    def __init__(self, max_bytes: int, chunk: int) -> None:
        self.max_bytes, self.chunk = max_bytes, chunk
        self._entries: OrderedDict[bytes, tuple[CachedPrefix, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, tokens: Sequence[int]) -> CachedPrefix | None:
        """The entry for the longest chunk-boundary prefix of `tokens` that is stored (it becomes the most
        recently used), or None."""
        if not self.enabled:
            return None
        with self._lock:
            for end in range(len(tokens) // self.chunk * self.chunk, 0, -self.chunk):
                key = _key(tokens[:end])
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
        return None

    def put(self, tokens: Sequence[int], state: RecurrentState, logits: np.ndarray) -> None:
        """Store copies of the state and logits after `tokens` (a multiple of `chunk` long), evicting the least
        recently used entries while over budget; an entry larger than the whole budget is not stored."""
        if not self.enabled or len(tokens) % self.chunk:
            return
        key = _key(tokens)
        size = _nbytes(state, logits)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            entry = CachedPrefix(len(tokens), state.clone(), np.array(logits, copy=True))
            self._entries[key] = (entry, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
