"""States after prompt prefixes, kept so a repeated system prompt or a growing chat is not prefilled again.

Entries sit at cut points: positions where a prompt's prefill may be split without changing a bit of what it
computes. Those are the multiples of `CUT_GRANULE` when the prefill chunk is one (RWKV-7's prefill graph runs
its recurrence in blocks of 16 positions, and ONNX Runtime's matrix products compute a row the same whatever
the row count; `tests/serve/test_prefill_cuts.py` proves it per version and precision), else the multiples of
the chunk. So a request that finds an entry continues from it and computes what an uncached run computes.

Which cut points get an entry (the scheduler decides, `Scheduler._admit`): every multiple of the chunk, the
end of each prompt, and the point where a prompt stops agreeing with the prompts seen before it
(`SeenPrefixes`): the second request that shares a system prompt stores the state at its end, and every later
one starts there. Keys are chained digests of the token ids, one per granule, so finding the longest entry
costs one pass over the prompt. Least recently used entries go first once the entries' bytes pass the budget.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rwkv_deploy.runtime.state import RecurrentState, host

CUT_GRANULE = 16  # a multiple of the prefill graph's recurrence block (RWKV-7's WKV_CHUNK; the others step one)
SEEN_PREFIXES_MAX = 1 << 16  # prefix digests remembered to find where prompts diverge (about 3 MiB)


def cut_granule(chunk: int) -> int:
    """The spacing of cut points for prefill chunks of `chunk` tokens: `CUT_GRANULE` when every chunk starts at
    one of its multiples, else the chunk (whose boundaries every run shares)."""
    return CUT_GRANULE if chunk % CUT_GRANULE == 0 else chunk


def prefix_keys(tokens: Sequence[int], granule: int) -> list[bytes]:
    """keys[k] identifies tokens[:k * granule] (keys[0] the empty prefix): each digest chains the one before."""
    ids = np.asarray(tokens, np.int64)
    keys = [b""]
    for k in range(len(ids) // granule):
        keys.append(hashlib.blake2b(keys[-1] + ids[k * granule:(k + 1) * granule].tobytes(), digest_size=20).digest())
    return keys


@dataclass(frozen=True)
class CachedPrefix:
    tokens: int  # how many prompt tokens the state has consumed
    state: RecurrentState  # batch 1, host memory, never changed (the scheduler copies before stepping from it)
    logits: np.ndarray  # [vocab] after the last of those tokens


def _nbytes(state: RecurrentState, logits: np.ndarray) -> int:
    return sum(host(v).nbytes for v in state.values) + logits.nbytes


class PrefixCache:
    """LRU map from token-id prefixes (at multiples of `granule`) to states, bounded by `max_bytes`."""

    def __init__(self, max_bytes: int, granule: int) -> None:
        self.max_bytes, self.granule = max_bytes, granule
        self._entries: OrderedDict[bytes, tuple[CachedPrefix, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, keys: Sequence[bytes], usable: Callable[[int], bool] = lambda _: True) -> CachedPrefix | None:
        """The entry for the longest stored prefix among `keys` (a prompt's `prefix_keys`) whose length `usable`
        accepts (it becomes the most recently used), or None."""
        if not self.enabled:
            return None
        with self._lock:
            for k in range(len(keys) - 1, 0, -1):
                if keys[k] in self._entries and usable(k * self.granule):
                    self._entries.move_to_end(keys[k])
                    return self._entries[keys[k]][0]
        return None

    def put(self, keys: Sequence[bytes], tokens: int, state: RecurrentState, logits: np.ndarray) -> None:
        """Store copies of the state and logits after the first `tokens` of a prompt whose `prefix_keys` are
        `keys` (`tokens` a multiple of the granule, else nothing is stored), evicting the least recently used
        entries while over budget; an entry larger than the whole budget is not stored."""
        if not self.enabled or tokens % self.granule or tokens // self.granule >= len(keys):
            return
        key = keys[tokens // self.granule]
        size = _nbytes(state, logits)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            entry = CachedPrefix(tokens, state.clone(), np.array(logits, copy=True))
            self._entries[key] = (entry, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted


class SeenPrefixes:
    """The prefix keys of recent prompts (a bounded LRU set), to find how far a new prompt agrees with one of
    them: that is where a shared system prompt ends, the cut point worth caching."""

    def __init__(self, max_keys: int = SEEN_PREFIXES_MAX) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def shared_length(self, keys: Sequence[bytes]) -> int:
        """The number of granules of the longest prefix of `keys` that an earlier prompt had."""
        for k in range(len(keys) - 1, 0, -1):
            if keys[k] in self._keys:
                return k
        return 0

    def remember(self, keys: Sequence[bytes]) -> None:
        for key in keys[1:]:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
