"""Text generation over any step backend: prefill, sampling, streaming, stop conditions, batching.

Every sequence's final `state` has consumed exactly its prompt and its `token_ids`, so a
conversation continues by passing that state with the next prompt. A stop token ends a sequence
without being added; a stop string ends it after the token that completed it, and the text is cut
before the stop string (it is never streamed). Batched generation runs all unfinished sequences in
one backend call per step and drops sequences from the batch as they finish.

Prompts go through a prefill graph in chunks of at most `prefill_chunk` tokens, the state carried from
chunk to chunk, so memory stays bounded for any prompt length and the logits are those of one long call.
Logits are checked after every backend call: NaN or infinity stops generation with a NonFiniteError that
says where it appeared (which sequence, after how many tokens, which state tensor), never a token id.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeGuard, runtime_checkable

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.interrupts import raise_if_interrupted

from .sampling import NonFiniteError, SamplingParams, count_token, sample_token
from .state import RecurrentState, host

if TYPE_CHECKING:
    from rwkv_deploy.tokenization import Tokenizer

Prompt = str | Sequence[int]
PREFILL_CHUNK = 512  # tokens per prefill call: bounded activations (and [T, vocab] logits for "all" graphs)
MAX_SEED = 2**64 - 1


class GenerationError(RefusedError, ValueError):
    """A generation request that cannot be served (empty prompt, text without a tokenizer, ...)."""


class StepBackend(Protocol):
    """What generation needs from an inference engine (ONNX Runtime, TensorRT).

    A backend may also be a `PrefillBackend`; prompts then go through its prefill graph in one call per
    block instead of one step per token (`can_prefill`)."""

    @property
    def vocab_size(self) -> int: ...

    def fresh_state(self, batch: int = 1) -> RecurrentState: ...

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """tokens int64 [B] -> logits float32 [B, vocab] and the state after those tokens."""
        ...


@runtime_checkable
class PrefillBackend(StepBackend, Protocol):
    """A StepBackend with a prefill graph: many tokens per sequence in one call."""

    @property
    def has_prefill(self) -> bool: ...

    def prefill(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """tokens int64 [B, T] -> logits float32 [B, vocab] after the last token, and the state after it."""
        ...


def can_prefill(backend: object) -> TypeGuard[PrefillBackend]:
    """Whether prompts can go through `backend`'s prefill graph (a PrefillBackend whose package has one)."""
    return isinstance(backend, PrefillBackend) and bool(backend.has_prefill)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    state: RecurrentState
    stats: GenerationStats
    finish_reason: str  # "stop" (stop token or stop string) or "length" (max_tokens reached)


class TextStream:
    """Token bytes in, text out as soon as it is whole UTF-8 characters that cannot begin a stop string."""

    def __init__(self, stop_strings: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stop_strings if s)
        self._held = ""
        self.text = ""
        self.stopped = False

    def push(self, data: bytes, final: bool = False) -> str:
        """The newly releasable text; sets `stopped` (and drops everything after) once a stop string appears."""
        self._held += self._decoder.decode(data, final=final)
        found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        if found:
            piece, self._held, self.stopped = self._held[: min(found)], "", True
        else:
            keep = 0 if final else self._stop_prefix_length()
            piece, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        self.text += piece
        return piece

    def close(self) -> str:
        """Release what is held back (an unfinished character becomes U+FFFD)."""
        return "" if self.stopped else self.push(b"", final=True)

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the held text that could be the start of a stop string."""
        return max((k for s in self._stops for k in range(min(len(s) - 1, len(self._held)), 0, -1)
                    if self._held.endswith(s[:k])), default=0)


@dataclass
class _Sequence:
    """Bookkeeping of one sequence during decoding."""

    prompt_tokens: int
    rng: np.random.Generator
    counts: np.ndarray | None
    stream: TextStream | None
    decay: float = 1.0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    state: RecurrentState | None = None
    decode_seconds: float = 0.0


class Generator:
    """Generates text with a backend and (for text prompts and output) the package's tokenizer."""

    def __init__(self, backend: StepBackend, tokenizer: "Tokenizer | None" = None,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:
        if prefill_chunk < 1:
            raise GenerationError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk

    # -- prefill -----------------------------------------------------------------------------------
    def prefill(self, token_ids: Sequence[int], state: RecurrentState | None = None) -> tuple[np.ndarray, RecurrentState]:
        """Feed a prompt: the logits [vocab] after its last token and the state after it."""
        logits, state = self._prefill([list(token_ids)], [state])
        return logits[0], state

    def _prefill(self, prompts: list[list[int]], states: Sequence[RecurrentState | None]) -> tuple[np.ndarray, RecurrentState]:
        """Feed prompts of any lengths as one batch; a prompt's row leaves the batch when it is consumed.

        Returns the logits [B, vocab] after each prompt and their states, concatenated in prompt order."""
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise GenerationError(f"prompt {i} is empty: the model needs at least one token to continue from")
        state = self._initial_state(states)
        running = list(range(len(prompts)))  # batch row -> prompt index
        final_logits: list[np.ndarray | None] = [None] * len(prompts)
        parked: list[RecurrentState | None] = [None] * len(prompts)
        position = 0
        for end in sorted(set(map(len, prompts))):  # feed up to where the next prompt ends, in one go
            block = np.array([prompts[i][position:end] for i in running], np.int64)  # [rows, end - position]
            logits, state = self._feed(block, state)
            check_finite_logits(logits, state, running, f"after {end} prompt tokens")
            position = end
            done = [row for row, i in enumerate(running) if len(prompts[i]) == end]
            if len(done) == len(running) == len(prompts):  # all equally long: the batch state is the answer
                return logits, state
            for row in done:
                final_logits[running[row]], parked[running[row]] = logits[row], state.rows([row])
            kept = [row for row in range(len(running)) if row not in done]
            running = [running[row] for row in kept]
            if done and kept:
                state = state.rows(kept)
        return np.stack(final_logits), RecurrentState.concat(parked)

    def _feed(self, block: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """Tokens [rows, T] into the backend: prefill calls of at most `prefill_chunk` tokens when it has a
        prefill graph (the state carried between them), else T steps."""
        if block.shape[1] > 1 and can_prefill(self.backend):
            for start in range(0, block.shape[1], self.prefill_chunk):
                raise_if_interrupted()
                logits, state = feed_chunk(self.backend, block[:, start:start + self.prefill_chunk], state)
            return logits, state
        for column in block.T:
            raise_if_interrupted()
            logits, state = self.backend.step(np.ascontiguousarray(column), state)
        return logits, state

    def _initial_state(self, states: Sequence[RecurrentState | None]) -> RecurrentState:
        if all(s is None for s in states):
            return self.backend.fresh_state(len(states))
        for i, s in enumerate(states):
            if s is not None and s.batch != 1:
                raise GenerationError(f"state {i} holds {s.batch} sequences; pass one state per prompt")
        return RecurrentState.concat([s if s is not None else self.backend.fresh_state(1) for s in states])

    # -- generation --------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (), seed: int | None = None,
                 on_token: Callable[[str], None] | None = None,
                 state: RecurrentState | None = None, penalty_decay: float = 1.0) -> GenerationResult:
        """Continue `prompt` (text, or token ids) by up to `max_tokens` tokens; `on_token` receives the
        text as it becomes printable. temperature 0 is greedy. The tokenizer's end-of-text id always stops."""
        callback = None if on_token is None else (lambda _index, piece: on_token(piece))
        return self.generate_batch(
            [prompt], max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, stop_tokens=stop_tokens,
            stop_strings=stop_strings, seed=seed, on_token=callback, states=None if state is None else [state],
            penalty_decay=penalty_decay)[0]

    def generate_batch(self, prompts: Sequence[Prompt], max_tokens: int, temperature: float = 1.0,
                       top_p: float = 1.0, top_k: int = 0, presence_penalty: float = 0.0,
                       frequency_penalty: float = 0.0, stop_tokens: Sequence[int] = (),
                       stop_strings: Sequence[str] = (), seed: int | None = None,
                       on_token: Callable[[int, str], None] | None = None,
                       states: Sequence[RecurrentState | None] | None = None,
                       penalty_decay: float = 1.0) -> list[GenerationResult]:
        """`generate` for several independent prompts in one batch; `on_token(index, text)`.

        Every sequence samples from its own generator seeded with `seed`, so with a seed each result
        is the one its prompt would get alone. Each result's stats count its own tokens; prefill time
        is the batch's, decode time runs until that sequence finished."""
        if max_tokens < 0:
            raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
        if states is not None and len(states) != len(prompts):
            raise GenerationError(f"{len(prompts)} prompts but {len(states)} states")
        if stop_strings and self.tokenizer is None:
            raise GenerationError("stop strings need a tokenizer; this package has none")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed <= MAX_SEED):
            raise GenerationError(f"seed must be a whole number in 0..2**64-1, got {seed!r}")
        params = SamplingParams(temperature, top_p, top_k, presence_penalty, frequency_penalty, penalty_decay)
        token_prompts = [self._encode(p) for p in prompts]
        started = time.perf_counter()
        logits, state = self._prefill(token_prompts, states or [None] * len(prompts))
        prefill_seconds = time.perf_counter() - started
        sequences = [self._new_sequence(len(p), params, seed, stop_strings) for p in token_prompts]
        stops = frozenset(stop_tokens) | self._eos()
        self._decode(logits, state, sequences, max_tokens, params, stops, on_token or (lambda _i, _p: None))
        return [GenerationResult(
            text=seq.stream.text if seq.stream else "", token_ids=seq.token_ids, state=seq.state,
            stats=GenerationStats(seq.prompt_tokens, len(seq.token_ids), prefill_seconds, seq.decode_seconds),
            finish_reason=seq.finish_reason) for seq in sequences]

    def _decode(self, logits: np.ndarray, state: RecurrentState, sequences: list[_Sequence], max_tokens: int,
                params: SamplingParams, stops: frozenset[int], on_token: Callable[[int, str], None]) -> None:
        """Sample, stream and feed until every sequence has finished; fills in each `_Sequence`."""
        started = time.perf_counter()
        running = list(range(len(sequences)))  # batch row -> sequence index

        def finish(row: int, reason: str, row_state: RecurrentState) -> None:
            seq = sequences[running[row]]
            seq.finish_reason = reason
            seq.state = row_state.rows([row]) if row_state.batch > 1 else row_state  # batch 1 stays on device
            seq.decode_seconds = time.perf_counter() - started
            if seq.stream:
                self._emit(on_token, running[row], seq.stream.close())

        if max_tokens == 0:
            for row in range(len(running)):
                finish(row, "length", state)
            return
        while running:
            # a termination signal whose exception something swallowed (the CLI remembers it) ends the loop here,
            # not after max_tokens: a million-token run would otherwise go on until the end
            raise_if_interrupted()
            feed, fed_tokens = [], []
            for row, index in enumerate(running):
                seq = sequences[index]
                token = sample_token(logits[row], params, seq.rng, seq.counts)
                if token in stops:
                    finish(row, "stop", state)
                    continue
                self._accept(seq, token, index, on_token)
                feed.append(row)
                fed_tokens.append(token)
            if not feed:
                return
            fed_state = state if len(feed) == len(running) else state.rows(feed)
            logits, state = self.backend.step(np.array(fed_tokens, np.int64), fed_state)
            running = [running[row] for row in feed]
            check_finite_logits(logits, state, running,
                                f"at generated token {len(sequences[running[0]].token_ids)}")
            done = {row: self._finished(sequences[index], max_tokens) for row, index in enumerate(running)}
            for row, reason in done.items():
                if reason:
                    finish(row, reason, state)
            kept = [row for row, reason in done.items() if not reason]
            if len(kept) < len(running):
                running = [running[row] for row in kept]
                logits = logits[kept]
                if kept:
                    state = state.rows(kept)

    def _accept(self, seq: _Sequence, token: int, index: int, on_token: Callable[[int, str], None]) -> None:
        seq.token_ids.append(token)
        count_token(seq.counts, token, seq.decay)
        if seq.stream:
            self._emit(on_token, index, seq.stream.push(self.tokenizer.decode_bytes([token])))

    @staticmethod
    def _finished(seq: _Sequence, max_tokens: int) -> str | None:
        return finish_reason(seq.stream, len(seq.token_ids), max_tokens)

    @staticmethod
    def _emit(on_token: Callable[[int, str], None], index: int, piece: str) -> None:
        if piece:
            on_token(index, piece)

    # -- helpers -----------------------------------------------------------------------------------
    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenerationError("this package has no tokenizer: give the prompt as token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def _eos(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        return frozenset() if eos is None else frozenset({eos})

    def _new_sequence(self, prompt_tokens: int, params: SamplingParams, seed: int | None,
                      stop_strings: Sequence[str]) -> _Sequence:
        stream = TextStream(stop_strings) if self.tokenizer is not None else None
        return _Sequence(prompt_tokens, np.random.default_rng(seed), params.new_counts(self.backend.vocab_size), stream,
                         params.penalty_decay)


def feed_chunk(backend: StepBackend, chunk: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
    """Tokens [rows, T] in one prefill call (a backend with a prefill graph), or one step when T is 1: the
    logits [rows, vocab] after the last token and the state after it."""
    chunk = np.ascontiguousarray(chunk)
    if chunk.shape[1] > 1:
        if not can_prefill(backend):
            raise TypeError(f"{type(backend).__name__} has no prefill graph: feed it one token at a time")
        return backend.prefill(chunk, state)
    return backend.step(np.ascontiguousarray(chunk[:, 0]), state)


def stream_logits(backend: StepBackend, tokens: Sequence[int]) -> np.ndarray:
    """[T, vocab] fp32 logits of one sequence stepped a token at a time from the package's initial state: the
    artifact side of every fidelity measure that walks a stream (bench, the Triton load check, the golden data)."""
    state, rows = backend.fresh_state(1), []
    for token in tokens:
        logits, state = backend.step(np.array([token], dtype=np.int64), state)
        rows.append(np.asarray(logits[0], dtype=np.float32))
    return np.stack(rows)


def finish_reason(stream: TextStream | None, generated: int, max_tokens: int) -> str | None:
    """Why a sequence ends after its latest fed token: "stop" (a stop string completed), "length" (max_tokens
    generated), or None (it goes on). A stop token ends it before being fed (the caller's check)."""
    if stream is not None and stream.stopped:
        return "stop"
    return "length" if generated >= max_tokens else None


def check_finite_logits(logits: np.ndarray, state: RecurrentState, sequences: Sequence[int], when: str) -> None:
    """NonFiniteError naming the first sequence whose logits hold NaN or infinity, when it happened, and the
    state tensors that went non-finite with it (a broken model, weights or initial state)."""
    finite = np.isfinite(logits).reshape(logits.shape[0], -1).all(axis=1)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite)[0])
    values = [host(v) for v in state.values]
    bad = [name for name, value in zip(state.names, values) if not np.isfinite(value[row]).all()]
    where = f"; state tensor {bad[0]} is NaN/infinite too" if bad else "; the state is still finite"
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise NonFiniteError(f"the model's logits are NaN or infinite {when} (sequence {sequences[row]}){where}{more}")
