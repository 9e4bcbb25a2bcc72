"""What a speed costs: each engine's logits on one fixed token stream against the fp32 PyTorch reference's
(pure functions). KL(reference || engine) per position, its mean and max, and how often the top-1 token agrees.
The stream is fed one token at a time from a fresh state, so the recurrent state's errors accumulate as they do
in generation."""

from __future__ import annotations

import numpy as np

FIELDS = ("kl_mean", "kl_max", "top1", "fidelity_tokens")


def token_stream(vocab_size: int, length: int, seed: int) -> np.ndarray:
    """The fixed stream every engine is fed: `length` ids drawn uniformly from the vocabulary."""
    return np.random.default_rng([seed, 0xF1DE]).integers(0, vocab_size, length, dtype=np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float | int]:
    """KL(reference || logits) per row ([T, V] each, in float64), its mean and max, and top-1 agreement."""
    reference, logits = np.asarray(reference), np.asarray(logits)
    if reference.shape != logits.shape:
        raise ValueError(f"logits of shape {list(logits.shape)} against a reference of {list(reference.shape)}")
    log_p, log_q = log_softmax(reference), log_softmax(logits)
    kl = np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=-1), 0.0)
    top1 = float((reference.argmax(axis=-1) == logits.argmax(axis=-1)).mean())
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "top1": top1, "fidelity_tokens": int(len(kl))}
