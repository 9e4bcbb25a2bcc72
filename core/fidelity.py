"""How close an artifact's logits are to a reference's: log-softmax, KL divergence, top-1 agreement (pure numpy).

One module for bench (which reports the cost of a speed-up) and validate (which gates a package), so both
report the same `kl_mean` for the same arrays. The NaN / Inf policy, shared by every function here:
everything is computed in float64; a NaN or Inf in either input yields NaN (or Inf) in the result, never a
finite number and never a numpy warning, so it fails every threshold (a comparison with NaN is never "within
limit"); KL values below zero, which only rounding produces, are clamped to 0 (a NaN stays NaN).
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable)


def nonfinite_ok(fn: F) -> F:
    """NaN / Inf inputs are an expected outcome to measure, not a numpy warning to print."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@nonfinite_ok
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


@nonfinite_ok
def kl_divergence(ref_logits: np.ndarray, art_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(art)) per row [..., V] -> [...], in nats, clamped at 0 (NaN stays NaN).

    The direction weights errors by the reference's probabilities: what matters is how much the
    artifact misjudges the tokens the reference model would actually sample.
    """
    ref_logits, art_logits = np.asarray(ref_logits), np.asarray(art_logits)
    if ref_logits.shape != art_logits.shape:
        raise ValueError(f"logits of shape {list(art_logits.shape)} against a reference of "
                         f"{list(ref_logits.shape)}")
    log_p, log_q = log_softmax(ref_logits), log_softmax(art_logits)
    return np.maximum(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1), 0.0)


def top1_matches(ref_logits: np.ndarray, art_logits: np.ndarray) -> np.ndarray:
    """Per row: whether both sides put the same token first (bool array of the batch shape)."""
    return np.argmax(ref_logits, axis=-1) == np.argmax(art_logits, axis=-1)


def count_nonfinite(x: np.ndarray) -> int:
    """How many elements are NaN or +-Inf."""
    x = np.asarray(x)
    return int(x.size - np.count_nonzero(np.isfinite(x)))
