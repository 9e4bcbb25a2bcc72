"""RWKV-5 "Eagle" (5.0, 5.1, 5.2): matrix-valued per-head state with a static decay.

Math: docs/rwkv-math.md §5. State per layer: att_shift [C], wkv S [H, N(key), N(value)]
(fp32), ffn_shift [C]. Load-time forms: `time_decay` holds w = exp(-exp(raw)) and `time_faaaa` holds the
bonus u ([H] for 5.0/5.1, [H, N] for 5.2). 5.0 has no gate.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..sizes import PathLike, Tensors, dim, heads, map_suffix
from ..state import BATCH, StateTensorSpec
from . import ops
from .base import LayerNorm, RWKVBlock, RWKVModel, State
from .v4 import ChannelMix4


def wkv5_sequence(
    s: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the v5/v6 recurrence over T positions.

    s [B, H, N, N] indexed [key, value]; r, k, v [B, T, H, N]; w [B, T, H, N] or broadcastable
    ([H, N] / [H, 1]); u broadcastable to [H, N]. Per position: y = Sᵀr + (rᵀ(u⊙k))v, then
    S ← diag(w)S + k vᵀ. Returns y [B, T, H, N] and the final S.
    """
    u = u.unsqueeze(-1)

    def step(carry: tuple[torch.Tensor, ...], x: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        (s,), (rt, kt, vt, *wt) = carry, x
        kv = kt.unsqueeze(-1) * vt.unsqueeze(-2)
        y = (rt.unsqueeze(-1) * (u * kv + s)).sum(dim=-2)
        return ((wt[0] if wt else w).unsqueeze(-1) * s + kv,), y

    per_token = (w,) if w.dim() == 4 else ()
    ys, (s,) = ops.scan_time(step, (s,), (r, k, v, *per_token))
    return ys, s


class HeadOutput(nn.Module):
    """v5/v6 output path: per-head GroupNorm (`ln_x`), optional gate, output projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, a = config.n_embd, config.att_size
        self.output = nn.Linear(a, c, bias=False)
        self.ln_x = LayerNorm(a, config.ln_x_eps)

    def project(self, y: torch.Tensor, g: torch.Tensor | None, n_head: int) -> torch.Tensor:
        y = ops.group_norm_heads(y.flatten(2), n_head, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps)
        return self.output(y if g is None else y * g)


class TimeMix5(HeadOutput):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c, a, h, n = config.n_embd, config.att_size, config.n_head, config.head_size
        per_head = config.version in ("5.0", "5.1")
        self.n_head, self.head_size = h, n
        self.gated = config.version != "5.0"
        self.time_mix_k = nn.Parameter(torch.zeros(c))
        self.time_mix_v = nn.Parameter(torch.zeros(c))
        self.time_mix_r = nn.Parameter(torch.zeros(c))
        self.time_decay = nn.Parameter(torch.zeros(h) if per_head else torch.zeros(h, n))
        self.time_faaaa = nn.Parameter(torch.zeros(h) if per_head else torch.zeros(h, n))
        self.key = nn.Linear(c, a, bias=False)
        self.value = nn.Linear(c, a, bias=False)
        self.receptance = nn.Linear(c, a, bias=False)
        if self.gated:
            self.time_mix_g = nn.Parameter(torch.zeros(c))
            self.gate = nn.Linear(c, a, bias=False)
        if config.has_time_state:
            self.time_state = nn.Parameter(torch.zeros(h, n, n))

    def forward(self, z: torch.Tensor, shift: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, t_len, _ = z.shape
        h, n = self.n_head, self.head_size
        prev = ops.shifted(z, shift)
        heads = (bsz, t_len, h, n)
        r = self.receptance(ops.lerp_mix(z, prev, self.time_mix_r)).reshape(heads)
        k = self.key(ops.lerp_mix(z, prev, self.time_mix_k)).reshape(heads)
        v = self.value(ops.lerp_mix(z, prev, self.time_mix_v)).reshape(heads)
        g = nn.functional.silu(self.gate(ops.lerp_mix(z, prev, self.time_mix_g))) if self.gated else None
        y, s = wkv5_sequence(s, r, self.time_decay.reshape(h, -1), k, v, self.time_faaaa.reshape(h, -1))
        return self.project(y, g, h), s


def tuned_state(att: nn.Module) -> torch.Tensor:
    """The state-tuned initial S: stored [H, value, key], used as [H, key, value]."""
    return att.time_state.detach().transpose(1, 2)


class Block5(RWKVBlock):
    time_mix_class: type[nn.Module] = TimeMix5
    channel_mix_class: type[nn.Module] = ChannelMix4

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config.n_embd
        self.config = config
        self.ln0 = LayerNorm(c, config.ln_eps) if layer == 0 and config.has_ln0 else None
        self.ln1 = LayerNorm(c, config.ln_eps)
        self.ln2 = LayerNorm(c, config.ln_eps)
        self.att = self.time_mix_class(config)
        self.ffn = self.channel_mix_class(config)

    def layer_state_specs(self, index: int) -> list[StateTensorSpec]:
        c, h, n = self.config.n_embd, self.config.n_head, self.config.head_size
        return [
            StateTensorSpec(f"layer{index}.att_shift", (BATCH, c)),
            StateTensorSpec(f"layer{index}.wkv", (BATCH, h, n, n), init_from_checkpoint=self.config.has_time_state),
            StateTensorSpec(f"layer{index}.ffn_shift", (BATCH, c)),
        ]

    def initial_state_tensor(self, name: str) -> torch.Tensor:
        return tuned_state(self.att)

    def forward(self, x: torch.Tensor, state: Sequence[torch.Tensor], ctx: dict) -> tuple[torch.Tensor, State]:
        att_shift, wkv, ffn_shift = state
        z = self.ln1(x)
        dx, wkv = self.att(z, att_shift, wkv)
        x = x + dx
        z2 = self.ln2(x)
        x = x + self.ffn(z2, ffn_shift)
        return x, [z[:, -1], wkv, z2[:, -1]]


class RWKV5(RWKVModel):
    block_class = Block5


def checkpoint_sizes(tensors: Tensors, path: PathLike) -> dict:
    att = dim(tensors, "blocks.0.att.key.weight", 0, path)
    return heads(dim(tensors, "blocks.0.att.time_decay", 0, path), att, path) | {
        "has_time_state": "blocks.0.att.time_state" in tensors}


def prepare_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decay -> exp(-exp(w)); 5.0/5.1 `time_first` (log u) -> `time_faaaa` (u)."""
    tensors = map_suffix(tensors, "att.time_decay", lambda w: torch.exp(-torch.exp(w)))
    return map_suffix(tensors, "att.time_first", torch.exp, "att.time_faaaa")
