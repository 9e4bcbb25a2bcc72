"""The package's prefill graph against the PyTorch reference: the same token stream fed in chunks.

Each side carries its own state from chunk to chunk (the reference through `forward(last_only=True)`, the
artifact through the prefill graph in ONNX Runtime). After every chunk the last position's logits and
every state tensor are compared, with the same limits as the step graph's (`thresholds.logits_max_abs`,
`state_max_rel`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.package.names import PREFILL_GRAPH, PREFILL_TOKENS_INPUT
from rwkv_deploy.models.reference.base import RWKVModel

from . import metrics
from .streams import TokenStream


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


@torch.no_grad()
def compare_prefill(model: RWKVModel, manifest: Manifest, package_dir: Path, stream: TokenStream,
                    chunk: int = 64) -> PrefillResult:
    import onnxruntime as ort

    graph = manifest.graphs[PREFILL_GRAPH]
    session = ort.InferenceSession(str(package_dir / graph.path), providers=["CPUExecutionProvider"])
    tokens = np.ascontiguousarray(stream.tokens.T)  # [batch, steps]
    batch = tokens.shape[0]
    ref_state = model.init_state(batch)
    art_state = [s.numpy() for s in ref_state]
    outputs = [manifest.logits_output] + [e.output for e in manifest.state]
    logit_error, state_error, chunks = 0.0, 0.0, 0
    for start in range(0, tokens.shape[1], chunk):
        block = tokens[:, start:start + chunk]
        ref_logits, ref_state = model(torch.from_numpy(block), ref_state, last_only=True)
        feeds = {PREFILL_TOKENS_INPUT: block, **{e.input: s for e, s in zip(manifest.state, art_state)}}
        art_logits, *art_state = session.run(outputs, feeds)
        if art_logits.ndim == 3:  # a graph exported with all positions' logits
            art_logits = art_logits[:, -1]
        logit_error = max(logit_error, metrics.max_abs_error(ref_logits.numpy(), art_logits))
        state_error = max(state_error, *(metrics.max_relative_error(r.numpy(), a) for r, a in zip(ref_state, art_state)))
        chunks += 1
    return PrefillResult(chunk, chunks, batch, logit_error, state_error)
