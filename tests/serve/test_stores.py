"""The prefix cache (chunk boundaries only, LRU within its byte budget) and the session store (one request per
session, LRU beyond max_sessions)."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime.state import RecurrentState
from rwkv_deploy.serve.errors import ApiError
from rwkv_deploy.serve.prefix_cache import PrefixCache
from rwkv_deploy.serve.sessions import SessionStore


def state(value: float) -> RecurrentState:
    return RecurrentState(("s",), (np.full((1, 4), value, np.float32),), "sha")


LOGITS = np.zeros(4, np.float32)
ENTRY_BYTES = 16 + 16  # state + logits


def test_the_longest_cached_chunk_boundary_is_found():
    cache = PrefixCache(max_bytes=10 * ENTRY_BYTES, chunk=2)
    cache.put([1, 2], state(1), LOGITS)
    cache.put([1, 2, 3, 4], state(2), LOGITS)
    cache.put([1, 2, 3], state(9), LOGITS)  # not a chunk boundary: not stored
    hit = cache.longest([1, 2, 3, 4, 5])
    assert hit.tokens == 4 and hit.state.values[0][0, 0] == 2
    assert cache.longest([1, 2, 9, 9]).tokens == 2
    assert cache.longest([7, 2, 3, 4]) is None and len(cache) == 2


def test_entries_are_copies():
    cache, original = PrefixCache(max_bytes=ENTRY_BYTES, chunk=1), state(1)
    cache.put([5], original, LOGITS)
    original.values[0][:] = 7
    assert cache.longest([5]).state.values[0][0, 0] == 1


def test_the_least_recently_used_entries_go_beyond_the_budget():
    cache = PrefixCache(max_bytes=2 * ENTRY_BYTES, chunk=1)
    cache.put([1], state(1), LOGITS)
    cache.put([2], state(2), LOGITS)
    cache.longest([1])  # 1 is now the most recently used
    cache.put([3], state(3), LOGITS)
    assert cache.longest([2]) is None and cache.longest([1]) and cache.longest([3])
    assert cache.bytes == 2 * ENTRY_BYTES
    off = PrefixCache(max_bytes=0, chunk=1)
    off.put([1], state(1), LOGITS)
    assert not off.enabled and off.longest([1]) is None


def test_a_session_runs_one_request_at_a_time_and_keeps_its_state():
    sessions = SessionStore(max_sessions=2)
    assert sessions.claim("a") is None
    with pytest.raises(ApiError) as busy:
        sessions.claim("a")
    assert busy.value.status == 409
    sessions.release("a", state(1))
    assert sessions.claim("a").values[0][0, 0] == 1
    sessions.release("a", None)  # a failed request keeps the old state
    assert sessions.claim("a").values[0][0, 0] == 1


def test_sessions_beyond_the_limit_forget_the_least_recently_used():
    sessions = SessionStore(max_sessions=2)
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        sessions.claim(name)
        sessions.release(name, state(value))
    assert len(sessions) == 2 and sessions.claim("a") is None
    assert sessions.forget("b") and not sessions.forget("b")
