"""The thread that owns one model's backend and steps every live request together (continuous batching).

Each turn of the loop: admit waiting requests while slots are free (`max_batch`), drop requests whose client
went away, feed prefill chunks (through the prefill graph; requests whose next chunks have the same length share
one call as rows of a batch) up to one chunk length of tokens, the prefilling requests taking turns so that a
short prompt is not held up by a long one, then one decode step for
all decoding requests at once through the step graph's batch axis. Requests join the
decode batch when their prompt is consumed and leave it when they finish, between steps; a long prompt costs
the streams in flight one chunk's time per step, never its whole prefill. A package without a prefill graph
feeds prompt tokens as rows of the same decode steps instead.

Per request the arithmetic is the runtime's (`Generator`): the same sampling (`sample_token`, counts with
`count_token`), the same stop handling (`TextStream`), the same prefill chunks counted from the start of the
prompt, and a final state that has consumed the prompt and every generated token (a stop token is not fed).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rwkv_deploy.runtime.generation import TextStream, can_prefill, check_finite_logits, feed_chunk, finish_reason
from rwkv_deploy.runtime.sampling import SamplingParams, count_token, sample_token
from rwkv_deploy.runtime.state import RecurrentState

from .errors import ApiError, draining, internal, queue_full
from .metrics import Metrics
from .prefix_cache import PrefixCache, SeenPrefixes, prefix_keys

if TYPE_CHECKING:
    from rwkv_deploy.runtime.generation import StepBackend
    from rwkv_deploy.tokenization import Tokenizer


# -- what the scheduler tells a request's handler ----------------------------------------------------------
@dataclass(frozen=True)
class Token:
    text: str  # newly printable text (may be "" while a character or a possible stop string is held back)
    token_id: int


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" or "length"
    text: str
    token_ids: list[int]
    prompt_tokens: int
    cached_tokens: int
    state: RecurrentState | None  # the final state (batch 1) when the job asked for it


@dataclass(frozen=True)
class Failed:
    error: ApiError


Event = Token | Finished | Failed


@dataclass
class Job:
    """One request as the scheduler runs it; `emit` is called from the scheduler thread."""

    prompt: list[int]  # at least one token, fed after the start state
    params: SamplingParams
    max_tokens: int
    emit: Callable[[Event], None]
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    start_state: RecurrentState | None = None  # a session's or the client's state; None: fresh (prefix cache)
    tail: Callable[[str], list[int]] | None = None  # chat: tokens that put the reply into the conversation,
    # fed onto the state after the prompt before the final state is reported
    want_state: bool = False
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the handler when the client goes away; the slot is freed at the next step


@dataclass
class _Slot:
    job: Job
    feed: list[int]  # tokens of the current phase (the prompt, or the chat tail)
    phase: str  # "prompt", "decode" or "tail"
    state: RecurrentState | None = None  # batch 1, while prefilling through the prefill graph
    logits: np.ndarray | None = None
    pos: int = 0  # tokens of `feed` consumed
    from_fresh: bool = False  # the prompt started from a fresh state: its cut points may be cached
    keys: list[bytes] = field(default_factory=list)  # the prompt's prefix keys, when it may use the cache
    cuts: tuple[int, ...] = ()  # cut points between the chunk boundaries where the state is cached
    cached_tokens: int = 0
    rng: np.random.Generator | None = None
    counts: np.ndarray | None = None
    stream: TextStream | None = None
    generated: list[int] = field(default_factory=list)
    prompt_state: RecurrentState | None = None  # kept for the chat tail
    final_state: RecurrentState | None = None
    finish_reason: str | None = None
    last_token_at: float = 0.0
    origin: RecurrentState | None = None  # the state it started from, for backends that `release` states


class Scheduler:
    """Runs `Job`s of one model on `backend` in its own thread; `submit` from any thread."""

    def __init__(self, model_id: str, backend: "StepBackend", tokenizer: "Tokenizer | None", metrics: Metrics,
                 cache: PrefixCache, max_batch: int, max_queue: int, prefill_chunk: int) -> None:
        self.model_id, self.backend, self.tokenizer = model_id, backend, tokenizer
        self.metrics, self.cache = metrics, cache
        self.seen = SeenPrefixes()  # the scheduler thread's own
        self.max_batch, self.max_queue, self.chunk = max_batch, max_queue, prefill_chunk
        self.uses_prefill_graph = can_prefill(backend)
        self._release = getattr(backend, "release", None)  # remote state (Triton): end it when a request leaves
        eos = tokenizer.eos_token_id if tokenizer is not None else None
        self._stop_tokens = frozenset() if eos is None else frozenset({eos})
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._prefilling: deque[_Slot] = deque()
        self._group: list[_Slot] = []  # decode batch, row order
        self._state: RecurrentState | None = None  # the decode batch's state
        self._logits: np.ndarray | None = None  # [rows, vocab]
        self._stopping = False
        self._abort: ApiError | None = None
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{model_id}", daemon=True)

    # -- outside the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._prefilling) + len(self._group)

    def submit(self, job: Job) -> None:
        """Queue a job; 429 when `max_queue` jobs are already waiting, 503 once stopping."""
        with self._cond:
            if self._stopping:
                raise draining()
            if len(self._pending) >= self.max_queue + max(0, self.max_batch - self.active):
                raise queue_full(self.model_id, len(self._pending))
            self._pending.append(job)
            self._cond.notify()

    def wake(self) -> None:
        """Look at the jobs again now (a handler marked one cancelled)."""
        with self._cond:
            self._cond.notify()

    def abort_all(self, error: ApiError) -> None:
        """Fail every job in flight or waiting with `error` (the drain timeout ran out)."""
        with self._cond:
            self._abort = error
            self._cond.notify()

    # -- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._prefilling or self._group or self._stopping or self._abort):
                    self._cond.wait()
                if self._stopping and not (self._pending or self._prefilling or self._group):
                    return
                abort, self._abort = self._abort, None
                admitted = []
                while self._pending and self.active + len(admitted) < self.max_batch:
                    admitted.append(self._pending.popleft())
            try:
                if abort is not None:
                    self._fail_everything(abort, admitted)
                    continue
                for job in admitted:
                    self._admit(job)
                self._drop_cancelled()
                if self._prefilling:
                    self._prefill_turn()
                if self._group:
                    self._decode_step()
            except Exception as exc:  # a bug or a backend failure: fail what is in flight, keep serving
                self._fail_everything(internal(f"generation failed: {' '.join(str(exc).splitlines())[:300]}"), [])
            self._gauges()

    def _gauges(self) -> None:
        m = self.model_id
        self.metrics.set("queue_depth", len(self._pending), model=m)
        self.metrics.set("active_requests", self.active, model=m)
        self.metrics.set("cache_bytes", self.cache.bytes, model=m)
        self.metrics.set("cache_entries", len(self.cache), model=m)

    def _admit(self, job: Job) -> None:
        slot = _Slot(job, job.prompt, "prompt", rng=np.random.default_rng(job.seed),
                     counts=job.params.new_counts(self.backend.vocab_size),
                     stream=TextStream(job.stop_strings) if self.tokenizer is not None else None)
        if job.cancelled:
            self._cancelled(slot)
            return
        state = job.start_state
        if state is None:
            slot.from_fresh = True
            if self.uses_prefill_graph and self.cache.enabled:
                state = self._from_cache(slot)
            if state is None:
                state = self.backend.fresh_state(1)
        slot.state = slot.origin = state
        if slot.pos == len(slot.feed):  # the whole prompt was cached
            self._prompt_done(slot)
        elif self.uses_prefill_graph:
            self._prefilling.append(slot)
        else:
            self._join(slot, state, None)

    def _from_cache(self, slot: _Slot) -> RecurrentState | None:
        """The cached state after the longest cached prefix of the prompt (None: none), and the cut points this
        prompt adds to the cache: where it stops agreeing with the prompts seen before, and its end."""
        prompt, granule = slot.feed, self.cache.granule
        slot.keys = prefix_keys(prompt, granule)

        def usable(tokens: int) -> bool:  # never a one-token last call where an uncached run has a longer one:
            # a call of one token takes another code path (its last bits differ)
            return len(prompt) - tokens != 1 or tokens % self.chunk == 0

        hit = self.cache.longest(slot.keys, usable)
        self.metrics.add("cache_hits_total" if hit else "cache_misses_total", model=self.model_id)
        start = hit.tokens if hit else 0
        shared = self.seen.shared_length(slot.keys) * granule
        end = len(prompt) // granule * granule
        slot.cuts = tuple(sorted({p for p in (shared, end) if p > start and p % self.chunk and usable(p)}))
        self.seen.remember(slot.keys)
        if hit is None:
            return None
        slot.cached_tokens = slot.pos = hit.tokens
        slot.logits = hit.logits
        self.metrics.add("cache_hit_tokens_total", hit.tokens, model=self.model_id)
        return hit.state

    # -- prefill -----------------------------------------------------------------------------------------
    def _prefill_turn(self) -> None:
        """Prefill chunks, taking turns between the prefilling requests, until one chunk length of tokens has
        been fed this turn (always at least one chunk): many short prompts start in one turn, a long one costs
        the decode steps one chunk per turn."""
        budget = self.chunk
        while self._prefilling:
            group = self._next_group(budget)
            if not group:
                return
            budget -= sum(end - slot.pos for slot, end in group)
            self._prefill_group(group)

    def _next_group(self, budget: int) -> list[tuple[_Slot, int]]:
        """The next chunk of the request at the head of the queue, with the next chunks of the requests behind it
        that have the same length, as many as `budget` tokens allow (the head's alone may exceed it in a turn's
        first call): one prefill call takes them as rows of one batch. ONNX Runtime computes each row of a
        batched prefill bit for bit as it computes it alone (tests/serve/test_prefill_cuts.py), so the
        batching changes no output, and 16 short prompts cost one call instead of 16."""
        head = self._prefilling[0]
        end = self._chunk_end(head)
        length = end - head.pos
        if length > budget and budget < self.chunk:
            return []
        group, used = [(head, end)], length
        for slot in list(self._prefilling)[1:]:
            if used + length > budget:
                break
            end = self._chunk_end(slot)
            if end - slot.pos == length:
                group.append((slot, end))
                used += length
        return group

    def _chunk_end(self, slot: _Slot) -> int:
        """Where the slot's next prefill call ends: the next multiple of the chunk length, cut point, or the end of
        its prompt."""
        ends = [len(slot.feed), (slot.pos // self.chunk + 1) * self.chunk]
        return min(ends + [p for p in slot.cuts if p > slot.pos])

    def _prefill_group(self, group: list[tuple[_Slot, int]]) -> None:
        """One prefill call for the group's chunks (each request's tokens up to its `end`: the next multiple of the
        chunk length, a cut point, or the end of its prompt). Requests with more to feed go to the back of the
        queue (round robin: a short prompt never waits for a long one's whole prefill)."""
        slots = [slot for slot, _ in group]
        for slot in slots:
            self._prefilling.remove(slot)
        tokens = np.asarray([slot.feed[slot.pos:end] for slot, end in group], np.int64)
        start = slots[0].state if len(slots) == 1 else RecurrentState.concat([slot.state for slot in slots])
        self.metrics.observe("prefill_batch_size", len(slots), model=self.model_id)
        try:
            logits, state = feed_chunk(self.backend, tokens, start)
        except Exception as exc:
            for slot in slots:
                self._fail(slot, _as_api_error(exc))
            return
        for row, (slot, end) in enumerate(group):
            row_state = state if len(slots) == 1 else state.rows([row])
            try:
                check_finite_logits(logits[row:row + 1], row_state, [0], f"after {end} prompt tokens")
            except Exception as exc:
                self._fail(slot, _as_api_error(exc))
                continue
            self._fed(slot, end, row_state, logits[row])

    def _fed(self, slot: _Slot, end: int, state: RecurrentState, logits: np.ndarray) -> None:
        """The slot's prompt (or tail) is consumed up to `end`: cache the state at a chunk boundary or cut point,
        then queue the next chunk, or decode, or finish."""
        if slot.phase == "prompt":
            self.metrics.add("prefilled_tokens_total", end - slot.pos, model=self.model_id)
        slot.pos, slot.state, slot.logits = end, state, logits
        if slot.phase == "prompt" and slot.keys and (end % self.chunk == 0 or end in slot.cuts):
            self.cache.put(slot.keys, end, state, logits)
        if end < len(slot.feed):
            self._prefilling.append(slot)
        elif slot.phase == "tail":
            slot.final_state = state
            self._finish(slot)
        else:
            self._prompt_done(slot)

    def _prompt_done(self, slot: _Slot) -> None:
        """The prompt is consumed (slot.state, slot.logits): start decoding, or finish at once for max_tokens 0."""
        slot.phase = "decode"
        if slot.job.tail is not None:
            slot.prompt_state = slot.state
        if slot.job.max_tokens == 0:
            slot.finish_reason, slot.final_state = "length", slot.state
            self._end_decode(slot)
            return
        self._join(slot, slot.state, slot.logits)

    def _join(self, slot: _Slot, state: RecurrentState, logits: np.ndarray | None) -> None:
        row = logits if logits is not None else np.zeros(self.backend.vocab_size, np.float32)
        slot.state = slot.logits = None
        self._group.append(slot)
        if self._state is None:
            self._state, self._logits = state, row[None, :]
        else:
            self._state = RecurrentState.concat([self._state, state])
            self._logits = np.concatenate([self._logits, row[None, :]])

    def _keep_rows(self, rows: list[int]) -> None:
        """Shrink the decode batch to `rows` (in that order)."""
        self._group = [self._group[r] for r in rows]
        if not rows:
            self._state = self._logits = None
        elif len(rows) < self._state.batch or rows != list(range(len(rows))):
            self._state = self._state.rows(rows)
            self._logits = self._logits[rows]

    # -- decode ------------------------------------------------------------------------------------------
    def _decode_step(self) -> None:
        """Sample one token for every decoding row (or take the next prompt token of a row still prefilling
        through steps), then feed them all in one step."""
        fed_rows, fed_tokens, ended = [], [], []
        now = time.perf_counter()
        for row, slot in enumerate(self._group):
            if slot.phase != "decode":  # prompt or tail tokens through steps (no prefill graph)
                fed_rows.append(row)
                fed_tokens.append(slot.feed[slot.pos])
                slot.pos += 1
                continue
            try:
                token = sample_token(self._logits[row], slot.job.params, slot.rng, slot.counts)
            except Exception as exc:
                ended.append((row, None, exc))
                continue
            if token in self._stop_tokens:
                ended.append((row, "stop", None))
                continue
            self._accept(slot, token, now)
            fed_rows.append(row)
            fed_tokens.append(token)
        before = self._state
        for row, reason, exc in ended:  # finished before the step: their state is the current one
            slot = self._group[row]
            if exc is not None:
                self._fail(slot, _as_api_error(exc))
            else:
                slot.finish_reason, slot.final_state = reason, before.rows([row]) if slot.job.want_state else None
                self._end_decode(slot)
        if not fed_rows:
            self._keep_rows([])
            return
        self._keep_rows(fed_rows)
        self.metrics.observe("batch_size", len(fed_rows), model=self.model_id)
        logits, state = self.backend.step(np.asarray(fed_tokens, np.int64), self._state)
        self._state, self._logits = state, logits
        bad = self._nonfinite_rows(logits, state)
        kept = []
        for row, slot in enumerate(self._group):
            if row in bad:
                self._fail(slot, bad[row])
            elif slot.phase != "decode":
                if slot.pos < len(slot.feed):
                    kept.append(row)
                elif slot.phase == "tail":
                    slot.final_state = state.rows([row])
                    self._finish(slot)
                else:  # its prompt is consumed: the row's logits are the prompt's
                    slot.phase = "decode"
                    if slot.job.tail is not None:
                        slot.prompt_state = state.rows([row])
                    if slot.job.max_tokens == 0:
                        slot.finish_reason, slot.final_state = "length", state.rows([row])
                        self._end_decode(slot)
                    else:
                        kept.append(row)
            else:
                reason = finish_reason(slot.stream, len(slot.generated), slot.job.max_tokens)
                if reason is None:
                    kept.append(row)
                else:
                    slot.finish_reason = reason
                    slot.final_state = state.rows([row]) if slot.job.want_state else None
                    self._end_decode(slot)
        self._keep_rows(kept)

    def _nonfinite_rows(self, logits: np.ndarray, state: RecurrentState) -> dict[int, ApiError]:
        finite = np.isfinite(logits).reshape(logits.shape[0], -1).all(axis=1)
        errors = {}
        for row in np.flatnonzero(~finite):
            try:
                check_finite_logits(logits[row:row + 1], state.rows([row]), [0],
                                    f"at generated token {len(self._group[row].generated)}")
            except Exception as exc:
                errors[int(row)] = _as_api_error(exc)
        return errors

    def _accept(self, slot: _Slot, token: int, now: float) -> None:
        slot.generated.append(token)
        count_token(slot.counts, token, slot.job.params.penalty_decay)
        if len(slot.generated) == 1:
            self.metrics.observe("time_to_first_token_seconds", now - slot.job.arrived, model=self.model_id)
        else:
            self.metrics.observe("inter_token_latency_seconds", now - slot.last_token_at, model=self.model_id)
        slot.last_token_at = now
        self.metrics.add("generated_tokens_total", model=self.model_id)
        piece = slot.stream.push(self.tokenizer.decode_bytes([token])) if slot.stream is not None else ""
        slot.job.emit(Token(piece, token))

    def _end_decode(self, slot: _Slot) -> None:
        """Decoding is over (slot.finish_reason, slot.final_state): release held text, then feed the chat
        tail when there is one and the state is wanted, else finish."""
        if slot.stream is not None:
            rest = slot.stream.close()
            if rest:
                slot.job.emit(Token(rest, -1))
        if slot.job.tail is None or not slot.job.want_state:
            self._finish(slot)
            return
        slot.phase, slot.feed, slot.pos = "tail", slot.job.tail(slot.stream.text if slot.stream else ""), 0
        slot.cuts = ()
        if self.uses_prefill_graph:
            slot.state = slot.prompt_state
            self._prefilling.append(slot)
        else:
            self._join(slot, slot.prompt_state, None)

    def _finish(self, slot: _Slot) -> None:
        self._released(slot)
        job = slot.job
        state = slot.final_state if job.want_state else None
        job.emit(Finished(slot.finish_reason or "length", slot.stream.text if slot.stream else "",
                          list(slot.generated), len(job.prompt), slot.cached_tokens, state))

    # -- leaving early -----------------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for slot in [s for s in self._prefilling if s.job.cancelled]:
            self._prefilling.remove(slot)
            self._cancelled(slot)
        if any(s.job.cancelled for s in self._group):
            gone = [s for s in self._group if s.job.cancelled]
            self._keep_rows([r for r, s in enumerate(self._group) if not s.job.cancelled])
            for slot in gone:
                self._cancelled(slot)
        with self._cond:
            for job in [j for j in self._pending if j.cancelled]:
                self._pending.remove(job)

    def _cancelled(self, slot: _Slot) -> None:
        self._released(slot)
        self.metrics.add("cancelled_total", model=self.model_id)

    def _fail(self, slot: _Slot, error: ApiError) -> None:
        self._released(slot)
        slot.job.emit(Failed(error))

    def _released(self, slot: _Slot) -> None:
        if self._release is not None and slot.origin is not None:
            origin, slot.origin = slot.origin, None
            try:
                self._release(origin)
            except Exception:  # ending a remote sequence is best effort (it also times out on its own)
                pass

    def _fail_everything(self, error: ApiError, admitted: list[Job]) -> None:
        for slot in list(self._prefilling) + list(self._group):
            self._fail(slot, error)
        for job in admitted:
            job.emit(Failed(error))
        with self._cond:
            pending, self._pending = list(self._pending), deque()
        for job in pending:
            job.emit(Failed(error))
        self._prefilling.clear()
        self._group, self._state, self._logits = [], None, None


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    return internal(f"generation failed: {' '.join(str(exc).splitlines())[:300]}")


__all__ = ["Event", "Failed", "Finished", "Job", "Scheduler", "Token"]
