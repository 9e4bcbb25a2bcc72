"""Pure tensor functions shared by the RWKV versions.

All take and return sequences shaped [batch, T, ...] so one code path serves one-token steps (T=1)
and multi-token forward passes; nothing branches on tensor values, so everything traces to ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias, eps)  # static shape: traces to one LayerNormalization


def group_norm_heads(
    y: torch.Tensor, n_head: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Per-head normalisation of y [..., C] (RWKV's `ln_x`), then a per-channel affine.

    Built as reshape -> LayerNorm without affine -> affine so that it does not depend on the
    opset-dependent semantics of ONNX GroupNormalization.
    """
    head_size = weight.shape[0] // n_head
    heads = y.unflatten(-1, (n_head, head_size))
    heads = F.layer_norm(heads, (head_size,), None, None, eps)
    return heads.flatten(-2) * weight + bias


def shifted(z: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Token shift: the previous position's row for each position; row 0 comes from the state `last` [B, C]."""
    return torch.cat([last.unsqueeze(1), z[:, :-1]], dim=1)


def lerp_mix(z: torch.Tensor, prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """RWKV-4/5 "time_mix" form: mix weights the current token."""
    return z * mix + prev * (1.0 - mix)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return torch.square(torch.relu(x))


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x · Wᵀ with a torch-layout [out, in] weight."""
    return F.linear(x, weight)
