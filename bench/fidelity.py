"""What a speed costs: each engine's logits on one fixed token stream against the fp32 PyTorch reference's.
KL(reference || engine) per position, its mean and max, and how often the top-1 token agrees (the math is
rwkv_deploy.fidelity, shared with validate). The stream is fed one token at a time from a fresh state, so the
recurrent state's errors accumulate as they do in generation."""

from __future__ import annotations

import numpy as np

from .. import fidelity

FIELDS = ("kl_mean", "kl_max", "top1", "fidelity_tokens")


def token_stream(vocab_size: int, length: int, seed: int) -> np.ndarray:
    """The fixed stream every engine is fed: `length` ids drawn uniformly from the vocabulary."""
    return np.random.default_rng([seed, 0xF1DE]).integers(0, vocab_size, length, dtype=np.int64)


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float | int]:
    """KL(reference || logits) per row ([T, V] each, in float64), its mean and max, and top-1 agreement."""
    kl = fidelity.kl_divergence(reference, logits)
    top1 = float(fidelity.top1_matches(reference, logits).mean())
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "top1": top1, "fidelity_tokens": int(len(kl))}
