"""The prefix cache (prefixes at multiples of a granule, LRU within its byte budget) and the session store (one request per
session, LRU beyond max_sessions)."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime.state import RecurrentState
from rwkv_deploy.serve.errors import ApiError
from rwkv_deploy.serve.prefix_cache import CUT_GRANULE, PrefixCache, SeenPrefixes, cut_granule, prefix_keys
from rwkv_deploy.serve.sessions import SessionStore


def state(value: float) -> RecurrentState:
    return RecurrentState(("s",), (np.full((1, 4), value, np.float32),), "sha")


LOGITS = np.zeros(4, np.float32)
ENTRY_BYTES = 16 + 16  # state + logits


def put(cache: PrefixCache, tokens: list[int], value: float) -> None:
    cache.put(prefix_keys(tokens, cache.granule), len(tokens), state(value), LOGITS)


def longest(cache: PrefixCache, tokens: list[int], usable=lambda _: True):
    return cache.longest(prefix_keys(tokens, cache.granule), usable)


def test_the_longest_cached_prefix_at_a_multiple_of_the_granule_is_found():
    cache = PrefixCache(max_bytes=10 * ENTRY_BYTES, granule=2)
    put(cache, [1, 2], 1)
    put(cache, [1, 2, 3, 4], 2)
    put(cache, [1, 2, 3], 9)  # not a multiple of the granule: not stored
    hit = longest(cache, [1, 2, 3, 4, 5])
    assert hit.tokens == 4 and hit.state.values[0][0, 0] == 2
    assert longest(cache, [1, 2, 9, 9]).tokens == 2
    assert longest(cache, [7, 2, 3, 4]) is None and len(cache) == 2
    assert longest(cache, [1, 2, 3, 4, 5], usable=lambda tokens: tokens != 4).tokens == 2


def test_keys_identify_whole_prefixes():
    a, b = prefix_keys([1, 2, 3, 4], 2), prefix_keys([1, 2, 5, 4], 2)
    assert a[1] == b[1] and a[2] != b[2] and len(a) == 3
    assert prefix_keys([3, 4], 2)[1] != a[2]  # a key depends on everything before it, not only its granule


def test_entries_are_copies():
    cache, original = PrefixCache(max_bytes=ENTRY_BYTES, granule=1), state(1)
    cache.put(prefix_keys([5], 1), 1, original, LOGITS)
    original.values[0][:] = 7
    assert longest(cache, [5]).state.values[0][0, 0] == 1


def test_the_least_recently_used_entries_go_beyond_the_budget():
    cache = PrefixCache(max_bytes=2 * ENTRY_BYTES, granule=1)
    put(cache, [1], 1)
    put(cache, [2], 2)
    longest(cache, [1])  # 1 is now the most recently used
    put(cache, [3], 3)
    assert longest(cache, [2]) is None and longest(cache, [1]) and longest(cache, [3])
    assert cache.bytes == 2 * ENTRY_BYTES
    off = PrefixCache(max_bytes=0, granule=1)
    put(off, [1], 1)
    assert not off.enabled and longest(off, [1]) is None


def test_seen_prefixes_say_how_far_a_prompt_agrees_with_an_earlier_one():
    seen = SeenPrefixes(max_keys=4)
    seen.remember(prefix_keys([1, 2, 3, 4, 5, 6], 2))
    assert seen.shared_length(prefix_keys([1, 2, 3, 4, 9, 9, 9], 2)) == 2  # granules
    assert seen.shared_length(prefix_keys([9, 2, 3, 4], 2)) == 0
    seen.remember(prefix_keys([7, 7, 7, 7], 2))  # over max_keys: the least recently seen go
    assert seen.shared_length(prefix_keys([1, 2, 3, 4, 5, 6], 2)) == 3
    assert seen.shared_length(prefix_keys([1, 2], 2)) == 0


def test_cut_points_are_the_granule_when_chunks_start_on_it():
    assert cut_granule(512) == CUT_GRANULE == 16 and cut_granule(48) == 16
    assert cut_granule(8) == 8 and cut_granule(24) == 24  # chunks not on the granule: their own boundaries


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
