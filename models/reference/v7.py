"""RWKV-7 "Goose" (x070, G1): generalised delta-rule state update with in-context learning rate.

Math: docs/rwkv-math.md §7. State per layer: att_shift [C], wkv S [H, N(value), N(key)]
(fp32), ffn_shift [C]. `v_first` (layer 0's value) is not state: it is a wire inside one token.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
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
        log_w = -DECAY_SCALE * torch.sigmoid(w_hat.float())
        w = torch.exp(log_w)

        r_h, w_h, k_h, v_h, a_h = (t.unflatten(-1, (h, n)) for t in (r, w, k, v, a))

        if ops.single_position(t_len):  # a decode step: operands reshaped straight into place, no time axis
            col, row = (lambda t: t.reshape(bsz, h, n, 1)), (lambda t: t.reshape(bsz, h, 1, n))
            wkv = wkv_update(wkv, row(w_h), col(-kk), col(v_h), torch.cat([row(kk * a_h), row(k_h)], dim=-2))
            y = (wkv @ col(r_h)).reshape(bsz, 1, h, n)
        elif ops.chunked_recurrence():  # a traced prefill graph: the recurrence in chunks of matrix products
            y, wkv = wkv_chunked(wkv, r_h, log_w.unflatten(-1, (h, n)), k_h, v_h, -kk, kk * a_h)
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


WKV_CHUNK = 16  # positions per chunk of `wkv_chunked`: decay over a chunk stays above 0.545**16 = 6e-5


def wkv_chunked(
    s: torch.Tensor, r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor,
    beta: torch.Tensor, chunk: int = WKV_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The RWKV-7 recurrence over T positions, exactly, in chunks of `chunk` positions of matrix products
    instead of T sequential steps: per chunk one step of a scan, so a prefill graph runs T/chunk small
    iterations, not T (docs/rwkv-math.md, "Chunked recurrence").

    Per position t: S_t = S_{t-1} (diag(w_t) + alpha_t beta_tᵀ) + v_t k_tᵀ and y_t = S_t r_t, with operands
    [B, T, H, N], log_w = log(w), state s [B, H, N(value), N(key)]. Returns (y [B, T, H, N], final state).

    Within a chunk, with G_t the cumulative decay (product of w up to t) and S~_t = S_t diag(1/G_t), the
    decay disappears: S~_t = S~_{t-1} + u_t b_tᵀ + v_t k'_tᵀ with u_t = S~_{t-1} a_t, a_t = G_{t-1} alpha_t,
    b_t = beta_t / G_t, k'_t = k_t / G_t. The u_t solve one unit-triangular system per chunk, (I - M)^-1 as a
    product of log2(chunk) factors (M is nilpotent), and y_t = S~_t (G_t r_t). Positions beyond T are padded
    with w = 1 and zero vectors, which leave the state unchanged."""
    bsz, t_len, h, n = r.shape
    count = (t_len + chunk - 1) // chunk  # sizes as expressions of T, so a traced graph keeps T dynamic
    operands = [F.pad(x, (0, 0, 0, 0, 0, count * chunk - t_len)) for x in (r, log_w, k, v, alpha, beta)]
    # [B, chunks, H, L, N]: one scan step per chunk, positions as rows
    chunks = [x.reshape(bsz, count, chunk, h, n).transpose(2, 3) for x in operands]
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=r.device).triu()
    strict = upper.triu(1)

    def step(carry: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        (state,), (r_c, lw_c, k_c, v_c, a_c, b_c) = carry, xs
        decay = lw_c.cumsum(dim=-2)  # log G_t, [B, H, L, N]
        r_t = r_c * torch.exp(decay)
        a_t = a_c * torch.exp(decay - lw_c)
        inv = torch.exp(-decay)
        b_t, k_t = b_c * inv, k_c * inv
        m_b = (b_t @ a_t.transpose(-1, -2)).masked_fill(~strict, 0.0)  # [s, t] = b_s . a_t for s < t
        m_k = (k_t @ a_t.transpose(-1, -2)).masked_fill(~strict, 0.0)
        solve = torch.eye(chunk, dtype=r.dtype, device=r.device) + m_b  # (I - M_b)^-1 = prod (I + M_b^(2^i))
        power = m_b
        for _ in range(int(chunk).bit_length() - 2):
            power = power @ power
            solve = solve + solve @ power
        v_cols = v_c.transpose(-1, -2)  # [B, H, N, L]
        u_cols = (state @ a_t.transpose(-1, -2) + v_cols @ m_k) @ solve
        n_b = (b_t @ r_t.transpose(-1, -2)).masked_fill(~upper, 0.0)  # [s, t] = b_s . r_t for s <= t
        n_k = (k_t @ r_t.transpose(-1, -2)).masked_fill(~upper, 0.0)
        y_cols = state @ r_t.transpose(-1, -2) + u_cols @ n_b + v_cols @ n_k
        state = (state + u_cols @ b_t + v_cols @ k_t) * torch.exp(decay[..., -1:, :])
        return (state,), y_cols.transpose(-1, -2)  # y rows [B, H, L, N]

    ys, (s,) = ops.scan_time(step, (s,), tuple(chunks))  # ys [B, chunks, H, L, N]
    y = ys.transpose(2, 3).reshape(bsz, count * chunk, h, n)[:, :t_len]
    return y, s


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
        self.ln0 = LayerNorm(c, config.ln_eps) if layer == 0 and config.has_ln0 else None
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
