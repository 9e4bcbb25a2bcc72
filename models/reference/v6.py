"""RWKV-6 "Finch": v5's state update with data-dependent token shift (ddlerp) and decay (LoRA).

Math: docs/rwkv-math.md §6. Same state layout as v5. `time_decay` stays in log-log form;
the per-token decay is exp(-exp(time_decay + tanh(xw·Dw1)·Dw2)).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..sizes import PathLike, Tensors, dim, heads
from . import ops
from .base import RWKVModel
from .v5 import Block5, HeadOutput, wkv5_sequence


class TimeMix6(HeadOutput):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c, a, h, n = config.n_embd, config.att_size, config.n_head, config.head_size
        d_mix, d_decay = config.lora["mix"], config.lora["decay"]
        self.n_head, self.head_size = h, n
        for name in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"):
            setattr(self, name, nn.Parameter(torch.zeros(c)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(c, 5 * d_mix))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, d_mix, c))
        self.time_decay = nn.Parameter(torch.zeros(a))
        self.time_decay_w1 = nn.Parameter(torch.zeros(c, d_decay))
        self.time_decay_w2 = nn.Parameter(torch.zeros(d_decay, a))
        self.time_faaaa = nn.Parameter(torch.zeros(h, n))
        self.key = nn.Linear(c, a, bias=False)
        self.value = nn.Linear(c, a, bias=False)
        self.receptance = nn.Linear(c, a, bias=False)
        self.gate = nn.Linear(c, a, bias=False)
        if config.has_time_state:
            self.time_state = nn.Parameter(torch.zeros(h, n, n))

    def forward(self, z: torch.Tensor, shift: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, t_len, _ = z.shape
        h, n = self.n_head, self.head_size
        d = ops.shifted(z, shift) - z
        m = torch.tanh((z + d * self.time_maa_x) @ self.time_maa_w1)
        m = m.reshape(bsz, t_len, 5, -1).transpose(1, 2)  # [B, 5, T, D_mix]
        mw, mk, mv, mr, mg = torch.matmul(m, self.time_maa_w2.unsqueeze(0)).unbind(dim=1)  # each [B, T, C]
        xw = z + d * (self.time_maa_w + mw)
        xk = z + d * (self.time_maa_k + mk)
        xv = z + d * (self.time_maa_v + mv)
        xr = z + d * (self.time_maa_r + mr)
        xg = z + d * (self.time_maa_g + mg)

        heads = (bsz, t_len, h, n)
        r = self.receptance(xr).reshape(heads)
        k = self.key(xk).reshape(heads)
        v = self.value(xv).reshape(heads)
        g = nn.functional.silu(self.gate(xg))
        w_log = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        w = torch.exp(-torch.exp(w_log.float())).reshape(heads)
        y, s = wkv5_sequence(s, r, w, k, v, self.time_faaaa)
        return self.project(y, g, h), s


class ChannelMix6(nn.Module):
    """v6 channel mixing: the v4 FFN with the "maa" (1 - mix) token-shift form."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, f = config.n_embd, config.ffn_size
        self.time_maa_k = nn.Parameter(torch.zeros(c))
        self.time_maa_r = nn.Parameter(torch.zeros(c))
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        d = ops.shifted(z, shift) - z
        k = ops.relu_squared(self.key(z + d * self.time_maa_k))
        r = torch.sigmoid(self.receptance(z + d * self.time_maa_r))
        return r * self.value(k)


class Block6(Block5):
    time_mix_class = TimeMix6
    channel_mix_class = ChannelMix6


class RWKV6(RWKVModel):
    block_class = Block6


def checkpoint_sizes(tensors: Tensors, path: PathLike) -> dict:
    att = dim(tensors, "blocks.0.att.key.weight", 0, path)
    return heads(dim(tensors, "blocks.0.att.time_faaaa", 0, path), att, path) | {
        "lora": {"mix": dim(tensors, "blocks.0.att.time_maa_w2", 1, path),
                 "decay": dim(tensors, "blocks.0.att.time_decay_w1", 1, path)},
        "has_time_state": "blocks.0.att.time_state" in tensors,
    }


def prepare_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """v6 keeps its decay in log-log form: nothing to transform."""
    return tensors
