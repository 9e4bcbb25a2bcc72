"""Choosing the next token from logits: penalties, temperature, top-k, top-p. Pure numpy.

Order (as in most servers): presence/frequency penalties on the raw logits (the counts they use may decay
each step, RWKV's `alpha_decay`: `penalty_decay` < 1 multiplies every count by it before a new token is
counted), then greedy argmax when temperature is 0; otherwise divide by the temperature, keep the top k, keep the smallest set whose
probability reaches top_p, and draw from what is left with a caller-seeded `numpy.random.Generator`.

Every setting must be a finite number in its range, and logits must be finite: a NaN or infinite logit is
an error (NonFiniteError), never a token id. Scaling subtracts the largest logit before dividing by the
temperature, so a tiny temperature (1e-40) is greedy rather than an overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rwkv_deploy.errors import RefusedError


class SamplingError(RefusedError, ValueError):
    """Sampling settings out of range."""


class NonFiniteError(RefusedError, ValueError):
    """NaN or infinity where a model must produce finite numbers (logits, state); says where it appeared."""


MAX_PENALTY = 100.0  # |presence_penalty|, |frequency_penalty|: beyond this every generated token is simply banned


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1 mean no cut; penalties apply to generated tokens, whose
    counts are multiplied by `penalty_decay` each step (1 = no decay, counts stay whole numbers)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SamplingError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
            raise SamplingError(f"top_k must be a whole number >= 0 (0 = no limit), got {self.top_k}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and abs(value) <= MAX_PENALTY):
                raise SamplingError(f"{name} must be a finite number in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}")
        if not (math.isfinite(self.penalty_decay) and 0 < self.penalty_decay <= 1):
            raise SamplingError(f"penalty_decay must be in (0, 1] (1 = no decay), got {self.penalty_decay}")

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    def new_counts(self, vocab_size: int) -> np.ndarray | None:
        """The per-token counts `sample_token` takes for the penalties (None when there are none): whole numbers
        without decay, float64 with it."""
        if not self.uses_penalties:
            return None
        return np.zeros(vocab_size, np.int64 if self.penalty_decay == 1 else np.float64)


def count_token(counts: np.ndarray | None, token: int, decay: float = 1.0) -> None:
    """Record a generated token in `counts` (from `SamplingParams.new_counts`): earlier counts decay first."""
    if counts is None:
        return
    if decay != 1:
        counts *= decay
    counts[token] += 1


def apply_penalties(logits: np.ndarray, counts: np.ndarray, presence: float, frequency: float) -> np.ndarray:
    """Lower the logit of each token already generated: `presence` once, plus `frequency` per occurrence."""
    return logits - presence * (counts > 0) - frequency * counts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities in float64 (stable for large logits; -inf entries get probability 0)."""
    shifted = np.exp(logits.astype(np.float64) - np.max(logits))
    return shifted / shifted.sum()


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """True for the k highest logits (exactly k, ties broken arbitrarily); all True when k is 0 or >= vocab."""
    if k <= 0 or k >= logits.size:
        return np.ones(logits.shape, dtype=bool)
    keep = np.zeros(logits.shape, dtype=bool)
    keep[np.argpartition(-logits, k - 1)[:k]] = True
    return keep


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """True for the smallest set of most likely tokens whose total probability reaches `p` (at least one)."""
    if p >= 1:
        return probs > 0
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]  # probability of the tokens ranked above each one
    keep = np.zeros(probs.shape, dtype=bool)
    keep[order[: max(1, int(np.count_nonzero(before < p)))]] = True
    return keep


def nonfinite_count(logits: np.ndarray) -> int:
    """How many entries of `logits` are NaN or infinite (0 for a healthy model output)."""
    return int(logits.size - np.count_nonzero(np.isfinite(logits)))


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 counts: np.ndarray | None = None) -> int:
    """One token id in [0, len(logits)) from 1-D `logits`; `counts` are how often each id was generated so far
    (for penalties). NonFiniteError when the logits hold NaN or infinity."""
    if bad := nonfinite_count(logits):
        raise NonFiniteError(f"{bad} of {logits.size} logits are NaN or infinite; no token can be sampled")
    if counts is not None and params.uses_penalties:
        logits = apply_penalties(logits.astype(np.float64), counts, params.presence_penalty, params.frequency_penalty)
    if params.temperature == 0:
        return int(np.argmax(logits))
    shifted = logits.astype(np.float64) - np.max(logits)  # <= 0 everywhere, 0 at the best token
    scaled = np.where(top_k_mask(logits, params.top_k), shifted / params.temperature, -np.inf)
    probs = softmax(scaled)
    probs = np.where(top_p_mask(probs, params.top_p), probs, 0.0)
    cdf = np.cumsum(probs)
    token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return token if token < logits.size else int(np.flatnonzero(probs)[-1])  # rounding at the very end
