"""The package's prefill graph against the PyTorch reference: the same token stream fed in chunks.

The artifact runs through the backend's own `prefill` (what `generate` feeds prompts through), the
reference through `forward(last_only=True)`; each side carries its own state from chunk to chunk. After
every chunk the last position's logits and every state tensor are compared, with the same limits as the
step graph's (`thresholds.logits_max_abs`, `state_max_rel`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .sides import ArtifactSide, ReferenceSide
from .streams import TokenStream

CHUNK = 64


@dataclass(frozen=True)
class PrefillResult:
    chunk: int
    chunks: int
    batch: int
    logits_max_abs: float
    state_max_rel: float

    @property
    def metrics(self) -> dict[str, float]:
        return {"logits_max_abs": self.logits_max_abs, "state_max_rel": self.state_max_rel}

    def describe(self) -> str:
        return f"{self.chunks} chunks of {self.chunk} tokens x {self.batch} sequences through the prefill graph"


def compare_prefill(reference: ReferenceSide, artifact: ArtifactSide, stream: TokenStream,
                    chunk: int = CHUNK) -> PrefillResult:
    """Feed `stream` to both sides `chunk` tokens at a time; the worst errors over all chunks."""
    tokens = np.ascontiguousarray(stream.tokens.T)  # [batch, steps]
    batch = tokens.shape[0]
    ref_state, art_state = reference.init_state(batch), artifact.init_state(batch)
    logits, states = reference.manifest.logits_output, [e.output for e in reference.manifest.state]
    logit_error, state_error, chunks = 0.0, 0.0, 0
    for start in range(0, tokens.shape[1], chunk):
        block = np.ascontiguousarray(tokens[:, start:start + chunk])
        ref_out, ref_state = reference.prefill(block, ref_state)
        art_out, art_state = artifact.prefill(block, art_state)
        # nanmax: a NaN anywhere must reach the verdict (Python's max drops it when it is not first)
        logit_error = metrics.nanmax([logit_error, metrics.max_abs_error(ref_out[logits], art_out[logits])])
        state_error = metrics.nanmax([state_error, *(metrics.max_relative_error(ref_out[s], art_out[s])
                                                     for s in states)])
        chunks += 1
    return PrefillResult(chunk, chunks, batch, logit_error, state_error)
