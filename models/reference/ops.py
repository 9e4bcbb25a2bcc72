"""Pure tensor functions shared by the RWKV versions.

All take and return sequences shaped [batch, T, ...] so one code path serves one-token steps (T=1)
and multi-token forward passes; nothing branches on tensor values, so everything traces to ONNX.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

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
    r = torch.relu(x)
    return r * r  # one Mul in ONNX; torch.square traces to Pow, which ONNX Runtime runs as a general power


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x · Wᵀ with a torch-layout [out, in] weight."""
    return F.linear(x, weight)


# -- the recurrence over time ----------------------------------------------------------------------------

_SCAN = False  # set by `recurrence_as_scan()` while a time-parallel (prefill) graph is traced


@contextlib.contextmanager
def recurrence_as_scan() -> Iterator[None]:
    """Trace `scan_time` as one ONNX Scan over a dynamic T instead of a loop unrolled at a fixed T.

    Only for exporting prefill graphs: eager runs and one-token step graphs keep the plain loop (a T=1
    Scan would add a subgraph call per layer to every decode step)."""
    global _SCAN
    previous, _SCAN = _SCAN, True
    try:
        yield
    finally:
        _SCAN = previous


def chunked_recurrence() -> bool:
    """True while a prefill graph is traced: versions with a chunked form of their recurrence use it there
    (RWKV-7's `wkv_chunked`); eager runs keep the plain per-position loop as the reference."""
    return _SCAN


def single_position(t_len: int) -> bool:
    """True for a one-token pass (a step graph, a decode step); never while a prefill graph (symbolic T)
    is traced, so T is not compared there."""
    return not _SCAN and t_len == 1


def scan_time(
    step: Callable[[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    carry: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run `step(carry, x_t) -> (carry, y_t)` over the time axis (dim 1) of every tensor in `xs` [B, T, ...].

    Returns the outputs stacked on dim 1 ([B, T, ...]) and the final carry. Everything that does not
    depend on the previous position is computed by the caller for all T at once; only `step` is sequential."""
    if _SCAN:
        from torch._higher_order_ops.scan import scan

        def combine(c: tuple[torch.Tensor, ...], x: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            new_carry, y = step(tuple(c), tuple(x))
            return tuple(new_carry), y

        final, ys = scan(combine, tuple(carry), tuple(xs), dim=1)
        return ys, tuple(final)
    ys = []
    for t in range(xs[0].shape[1]):
        carry, y = step(carry, tuple(x[:, t] for x in xs))
        ys.append(y)
    return torch.stack(ys, dim=1), carry
