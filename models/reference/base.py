"""The one interface every RWKV reference model implements.

A model is an `nn.Module` whose parameter names are the checkpoint's own keys (after load-time
transforms), so loading is `load_state_dict` and a missing or extra key is a readable error.
`step` and `forward` share one code path: `step` is `forward` over a single position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..state import StateSpec, StateTensorSpec
from . import ops

State = list[torch.Tensor]


class LayerNorm(nn.Module):
    """Parameters only (`weight`, `bias`), named as in the checkpoints."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class RWKVBlock(nn.Module):
    """One layer: time mixing then channel mixing, each with its own slice of the state."""

    def layer_state_specs(self, index: int) -> list[StateTensorSpec]:
        raise NotImplementedError

    def initial_state_tensor(self, name: str) -> torch.Tensor:
        """The checkpoint-stored fresh value of a state tensor marked `init_from_checkpoint`."""
        raise NotImplementedError(f"{type(self).__name__} stores no initial value for {name}")

    def forward(
        self, x: torch.Tensor, state: Sequence[torch.Tensor], ctx: dict
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError


class RWKVModel(nn.Module):
    """Embedding -> blocks -> ln_out -> head, with the state passed in and returned explicitly."""

    block_class: type[RWKVBlock]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.n_embd
        self.emb = nn.Embedding(config.vocab_size, c)
        self.blocks = nn.ModuleList(self.block_class(config, i) for i in range(config.n_layer))
        self.ln_out = LayerNorm(c, config.ln_eps)
        self.head = nn.Linear(c, config.vocab_size, bias=False)
        self._spec = StateSpec(
            tuple(s for i, block in enumerate(self.blocks) for s in block.layer_state_specs(i))
        )

    # -- state -------------------------------------------------------------------------------
    def state_spec(self) -> StateSpec:
        return self._spec

    def init_state(self, batch: int = 1) -> State:
        """A fresh state: constant fills, or the checkpoint's tuned state where it has one."""
        state: State = []
        per_layer = len(self._spec) // self.config.n_layer
        for k, spec in enumerate(self._spec):
            shape = spec.concrete_shape(batch)
            if spec.init_from_checkpoint:
                block = self.blocks[k // per_layer]
                tuned = block.initial_state_tensor(spec.name).to(torch.float32)
                state.append(tuned.unsqueeze(0).expand(shape).clone())
            else:
                state.append(torch.full(shape, spec.init, dtype=getattr(torch, spec.dtype)))
        return state

    # -- load-time ---------------------------------------------------------------------------
    def fold_ln0(self) -> None:
        """Replace the embedding by LN0(embedding) and drop LN0: exact, since LN0 only sees embeddings."""
        ln0 = getattr(self.blocks[0], "ln0", None)
        if ln0 is None:
            return
        with torch.no_grad():
            self.emb.weight.copy_(ln0(self.emb.weight))
        del self.blocks[0].ln0
        self.blocks[0].ln0 = None

    # -- compute -----------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, state: Sequence[torch.Tensor],
                last_only: bool = False) -> tuple[torch.Tensor, State]:
        """tokens [B, T] int64 -> logits [B, T, V] float32 and the state after the last token.

        `last_only`: logits [B, V] of the last position only; the head (the largest matrix) then runs once
        instead of T times, which is most of a prefill's saving."""
        x = self.emb(tokens)
        ln0 = getattr(self.blocks[0], "ln0", None)
        if ln0 is not None:
            x = ln0(x)
        per_layer = len(self._spec) // self.config.n_layer
        new_state: State = []
        ctx: dict = {"tokens": tokens}
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, state[i * per_layer : (i + 1) * per_layer], ctx)
            new_state.extend(layer_state)
        if last_only:  # kept [B, 1, C] so the head traces to the same weight layout as the step graph's
            return self.head(self.ln_out(x[:, -1:]))[:, 0], new_state
        return self.head(self.ln_out(x)), new_state

    def step(self, tokens: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, State]:
        """tokens [B] -> logits [B, V] and the new state: one recurrent step."""
        logits, new_state = self.forward(tokens.unsqueeze(1), state)
        return logits[:, 0], new_state

    @torch.no_grad()
    def stream_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """[T, vocab] fp32 logits of one sequence fed a token at a time from the initial state: the reference
        side of every fidelity measure that walks a stream (bench, the golden data)."""
        state, rows = self.init_state(1), []
        for token in tokens:
            logits, state = self.step(torch.tensor([int(token)]), state)
            rows.append(logits[0].float().numpy())
        return np.stack(rows)
