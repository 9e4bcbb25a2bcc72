"""Greedy decoding on each side on its own: shows whether the errors are large enough to change generated text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .sides import Side
from .streams import TokenStream, prompt_tokens


@dataclass
class GreedyResult:
    """Each side decodes on its own from the same prompts; `matched[b]` = identical tokens before divergence,
    `margins[b]` = how much the reference preferred its token where they parted (0 if they never did)."""

    prompt_stream: str
    prompt_length: int
    tokens: int
    matched: list[int]
    margins: list[float]
    reference_tokens: list[list[int]]
    artifact_tokens: list[list[int]]

    @property
    def min_fraction(self) -> float:
        return min(self.matched) / self.tokens

    @property
    def max_margin(self) -> float:
        return metrics.nanmax(self.margins)


def greedy_decode(side: Side, prompts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Feed `prompts` [B, P] one step at a time, then `n` times append the argmax token and feed it back.

    Returns the tokens [B, n] and the logits [n, B, V] each one was chosen from.
    """
    state = side.init_state(prompts.shape[0])
    for t in range(prompts.shape[1]):
        out, state = side.advance(np.ascontiguousarray(prompts[:, t]), state)
    tokens, logits = [], []
    for i in range(n):
        logits.append(out[side.manifest.logits_output])
        tokens.append(np.argmax(logits[-1], axis=-1).astype(np.int64))
        if i + 1 < n:
            out, state = side.advance(tokens[-1], state)
    return np.stack(tokens, axis=1), np.stack(logits)


def compare_greedy(reference: Side, artifact: Side, stream: TokenStream, prompt_length: int, n: int) -> GreedyResult:
    """Both sides greedy-decode `n` tokens from the first `prompt_length` tokens of each sequence of `stream`."""
    prompts = prompt_tokens(stream, min(prompt_length, stream.steps))
    (ref, ref_logits), (art, _) = greedy_decode(reference, prompts, n), greedy_decode(artifact, prompts, n)
    return GreedyResult(stream.name, prompts.shape[1], n, metrics.matching_prefix_length(ref, art).tolist(),
                        metrics.divergence_margins(ref_logits, ref, art).tolist(), ref.tolist(), art.tolist())
