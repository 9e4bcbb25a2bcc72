"""RWKV-4: per-channel WKV kept in max-shifted log space (aa, bb, pp), "time_mix" token shift.

Math: docs/rwkv-math.md §4. State per layer: att_shift [C], aa, bb, pp (init -1e30) [A], ffn_shift [C],
all fp32. `time_decay` holds the load-time form -exp(w) (log of the per-step decay).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..sizes import PathLike, Tensors, map_suffix
from ..state import BATCH, StateTensorSpec
from . import ops
from .base import LayerNorm, RWKVBlock, RWKVModel, State

PP_INIT = -1e30


class TimeMix4(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, a = config.n_embd, config.att_size
        self.time_mix_k = nn.Parameter(torch.zeros(c))
        self.time_mix_v = nn.Parameter(torch.zeros(c))
        self.time_mix_r = nn.Parameter(torch.zeros(c))
        self.time_decay = nn.Parameter(torch.zeros(a))
        self.time_first = nn.Parameter(torch.zeros(a))
        self.key = nn.Linear(c, a, bias=False)
        self.value = nn.Linear(c, a, bias=False)
        self.receptance = nn.Linear(c, a, bias=False)
        self.output = nn.Linear(a, c, bias=False)

    def forward(
        self, z: torch.Tensor, shift: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        prev = ops.shifted(z, shift)
        k = self.key(ops.lerp_mix(z, prev, self.time_mix_k))
        v = self.value(ops.lerp_mix(z, prev, self.time_mix_v))
        r = torch.sigmoid(self.receptance(ops.lerp_mix(z, prev, self.time_mix_r)))
        u, w = self.time_first, self.time_decay

        def step(carry: tuple[torch.Tensor, ...], x: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            (aa, bb, pp), (kt, vt) = carry, x
            q = torch.maximum(pp, u + kt)
            e1, e2 = torch.exp(pp - q), torch.exp(u + kt - q)
            out = (e1 * aa + e2 * vt) / (e1 * bb + e2)
            q2 = torch.maximum(pp + w, kt)
            e1, e2 = torch.exp(pp + w - q2), torch.exp(kt - q2)
            return (e1 * aa + e2 * vt, e1 * bb + e2, q2), out

        wkv, (aa, bb, pp) = ops.scan_time(step, (aa, bb, pp), (k, v))
        return self.output(r * wkv), aa, bb, pp


class ChannelMix4(nn.Module):
    """v4/v5 channel mixing: receptance-gated squared-ReLU FFN with "time_mix" shift."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, f = config.n_embd, config.ffn_size
        self.time_mix_k = nn.Parameter(torch.zeros(c))
        self.time_mix_r = nn.Parameter(torch.zeros(c))
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        prev = ops.shifted(z, shift)
        k = ops.relu_squared(self.key(ops.lerp_mix(z, prev, self.time_mix_k)))
        r = torch.sigmoid(self.receptance(ops.lerp_mix(z, prev, self.time_mix_r)))
        return r * self.value(k)


class Block4(RWKVBlock):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config.n_embd
        self.config = config
        self.ln0 = LayerNorm(c, config.ln_eps) if layer == 0 and config.has_ln0 else None
        self.ln1 = LayerNorm(c, config.ln_eps)
        self.ln2 = LayerNorm(c, config.ln_eps)
        self.att = TimeMix4(config)
        self.ffn = ChannelMix4(config)

    def layer_state_specs(self, index: int) -> list[StateTensorSpec]:
        c, a = self.config.n_embd, self.config.att_size
        return [
            StateTensorSpec(f"layer{index}.att_shift", (BATCH, c)),
            StateTensorSpec(f"layer{index}.att_aa", (BATCH, a)),
            StateTensorSpec(f"layer{index}.att_bb", (BATCH, a)),
            StateTensorSpec(f"layer{index}.att_pp", (BATCH, a), init=PP_INIT),
            StateTensorSpec(f"layer{index}.ffn_shift", (BATCH, c)),
        ]

    def forward(self, x: torch.Tensor, state: Sequence[torch.Tensor], ctx: dict) -> tuple[torch.Tensor, State]:
        att_shift, aa, bb, pp, ffn_shift = state
        z = self.ln1(x)
        dx, aa, bb, pp = self.att(z, att_shift, aa, bb, pp)
        x = x + dx
        z2 = self.ln2(x)
        x = x + self.ffn(z2, ffn_shift)
        return x, [z[:, -1], aa, bb, pp, z2[:, -1]]


class RWKV4(RWKVModel):
    block_class = Block4


def checkpoint_sizes(tensors: Tensors, path: PathLike) -> dict:
    """RWKV-4 has no heads or low-rank parts: the common sizes say everything."""
    return {}


def prepare_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """time_decay -> -exp(time_decay), the log of the per-step decay."""
    return map_suffix(tensors, "att.time_decay", lambda w: -torch.exp(w))
