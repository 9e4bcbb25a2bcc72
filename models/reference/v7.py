"""RWKV-7 "Goose" (x070, G1): generalised delta-rule state update with in-context learning rate.

Math: docs/rwkv-math.md §7. State per layer: att_shift [C], wkv S [H, N(value), N(key)]
(fp32), ffn_shift [C]. `v_first` (layer 0's value) is not state: it is a wire inside one token.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..sizes import PathLike, Tensors, dim, heads
from ..state import BATCH, StateTensorSpec
from . import ops
from .base import LayerNorm, RWKVBlock, RWKVModel, State

DECAY_SCALE = math.exp(-0.5)  # w = exp(-e^-0.5 * sigmoid(w_hat)), the soft-clamped decay in (0.545, 1)


def _vec(c: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(c))


def _mat(n_in: int, n_out: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n_in, n_out))


class TimeMix7(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c, h, n = config.n_embd, config.n_head, config.head_size
        r = config.lora
        self.n_head, self.head_size, self.layer = h, n, layer
        self.ln_x_eps = config.ln_x_eps
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, _vec(c))
        self.r_k = nn.Parameter(torch.zeros(h, n))
        self.w1, self.w2 = _mat(c, r["w"]), _mat(r["w"], c)
        self.a1, self.a2 = _mat(c, r["a"]), _mat(r["a"], c)
        if layer > 0:  # layer 0's value is v_first itself; released files carry unused v0/v1/v2 there
            self.v0 = _vec(c)
            self.v1, self.v2 = _mat(c, r["v"]), _mat(r["v"], c)
        self.g1, self.g2 = _mat(c, r["g"]), _mat(r["g"], c)
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = LayerNorm(c, config.ln_x_eps)

    def forward(
        self, z: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor, ctx: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, t_len, c = z.shape
        h, n = self.n_head, self.head_size
        d = ops.shifted(z, shift) - z
        xr, xw, xk, xv, xa, xg = (z + d * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        w_hat = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        k = self.key(xk)
        v = self.value(xv)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        kk = (k * self.k_k).reshape(bsz, t_len, h, n)
        kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(1e-12)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer == 0:
            ctx["v_first"] = v
        else:
            v = v + (ctx["v_first"] - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        w = torch.exp(-DECAY_SCALE * torch.sigmoid(w_hat.float()))

        r_h, w_h, k_h, v_h, a_h = (t.unflatten(-1, (h, n)) for t in (r, w, k, v, a))

        if ops.single_position(t_len):  # a decode step: operands reshaped straight into place, no time axis
            col, row = (lambda t: t.reshape(bsz, h, n, 1)), (lambda t: t.reshape(bsz, h, 1, n))
            wkv = wkv_update(wkv, row(w_h), col(-kk), col(v_h), torch.cat([row(kk * a_h), row(k_h)], dim=-2))
            y = (wkv @ col(r_h)).reshape(bsz, 1, h, n)
        else:
            # every per-position operand is shaped for the state update here, for all T at once, so the
            # sequential part is only the five products and sums of `wkv_update`
            columns = (r_h.unsqueeze(-1), (-kk).unsqueeze(-1), v_h.unsqueeze(-1))  # [B, T, H, N, 1]
            rows = (w_h.unsqueeze(-2), torch.stack([kk * a_h, k_h], dim=-2))  # [B, T, H, 1, N], [B, T, H, 2, N]

            def step(carry: tuple[torch.Tensor, ...], x: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
                (s,), (r_col, alpha_col, v_col, w_row, right) = carry, x
                s = wkv_update(s, w_row, alpha_col, v_col, right)
                return (s,), s @ r_col

            y, (wkv,) = ops.scan_time(step, (wkv,), (*columns, *rows))
            y = y.squeeze(-1)  # [B, T, H, N]

        y = ops.group_norm_heads(y.reshape(bsz, t_len, c), h, self.ln_x.weight, self.ln_x.bias, self.ln_x_eps)
        bonus = (r_h * k_h * self.r_k).sum(dim=-1, keepdim=True) * v_h
        y = y + bonus.reshape(bsz, t_len, c)
        return self.output(y * g), wkv


def wkv_update(
    s: torch.Tensor, w_row: torch.Tensor, alpha_col: torch.Tensor, v_col: torch.Tensor, right: torch.Tensor,
) -> torch.Tensor:
    """S ← S·diag(w) + (S·α)βᵀ + v·kᵀ for S [B, H, N(value), N(key)].

    Operands come pre-shaped: w_row [B, H, 1, N], α and v as columns [B, H, N, 1], `right` = [β; k]
    stacked as [B, H, 2, N]. The two rank-1 terms are one [N, 2] x [2, N] product, so the state is read
    and written fewer times. The readout y = S·r is `S @ r_col` on the updated state.
    """
    left = torch.cat([s @ alpha_col, v_col], dim=-1)  # [B, H, N, 2]
    return s * w_row + left @ right


class ChannelMix7(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, f = config.n_embd, config.ffn_size
        self.x_k = _vec(c)
        self.key = nn.Linear(c, f, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        xk = z + (ops.shifted(z, shift) - z) * self.x_k
        return self.value(ops.relu_squared(self.key(xk)))


class Block7(RWKVBlock):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config.n_embd
        self.config = config
        self.ln0 = LayerNorm(c, config.ln_eps) if layer == 0 else None
        self.ln1 = LayerNorm(c, config.ln_eps)
        self.ln2 = LayerNorm(c, config.ln_eps)
        self.att = TimeMix7(config, layer)
        self.ffn = ChannelMix7(config)

    def layer_state_specs(self, index: int) -> list[StateTensorSpec]:
        c, h, n = self.config.n_embd, self.config.n_head, self.config.head_size
        return [
            StateTensorSpec(f"layer{index}.att_shift", (BATCH, c)),
            StateTensorSpec(f"layer{index}.wkv", (BATCH, h, n, n)),
            StateTensorSpec(f"layer{index}.ffn_shift", (BATCH, c)),
        ]

    def forward(self, x: torch.Tensor, state: Sequence[torch.Tensor], ctx: dict) -> tuple[torch.Tensor, State]:
        att_shift, wkv, ffn_shift = state
        z = self.ln1(x)
        dx, wkv = self.att(z, att_shift, wkv, ctx)
        x = x + dx
        z2 = self.ln2(x)
        x = x + self.ffn(z2, ffn_shift)
        return x, [z[:, -1], wkv, z2[:, -1]]


class RWKV7(RWKVModel):
    block_class = Block7


def checkpoint_sizes(tensors: Tensors, path: PathLike) -> dict:
    v_key = "blocks.1.att.v1" if "blocks.1.att.v1" in tensors else "blocks.0.att.v1"
    return heads(dim(tensors, "blocks.0.att.r_k", 0, path), dim(tensors, "blocks.0.att.key.weight", 0, path), path) | {
        "lora": {
            "w": dim(tensors, "blocks.0.att.w1", 1, path),
            "a": dim(tensors, "blocks.0.att.a1", 1, path),
            "v": dim(tensors, v_key, 1, path) if v_key in tensors else 0,
            "g": dim(tensors, "blocks.0.att.g1", 1, path),
        }
    }


def prepare_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer 0's v0/v1/v2 ship in released files, but no reference reads them: drop them."""
    return {k: v for k, v in tensors.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
