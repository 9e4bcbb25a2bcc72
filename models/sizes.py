"""Sizes every version reads the same way from a state dict (docs/rwkv-math.md §2.2)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from rwkv_deploy.errors import CheckpointError

Tensors = Mapping[str, torch.Tensor]
PathLike = str | os.PathLike


def require(tensors: Tensors, key: str, path: str | os.PathLike) -> torch.Tensor:
    try:
        return tensors[key]
    except KeyError:
        raise CheckpointError(path, f"missing key {key}") from None


def dim(tensors: Tensors, key: str, axis: int, path: str | os.PathLike) -> int:
    t = require(tensors, key, path)
    if t.dim() <= axis:
        raise CheckpointError(path, f"{key} has shape {list(t.shape)}, expected at least {axis + 1} dimensions")
    return int(t.shape[axis])


@dataclass(frozen=True)
class CommonSizes:
    n_layer: int
    n_embd: int
    vocab_size: int
    att_size: int
    ffn_size: int


def common_sizes(tensors: Tensors, path: str | os.PathLike) -> CommonSizes:
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layers) + 1
    gaps = sorted(set(range(n_layer)) - layers)
    if gaps:
        raise CheckpointError(path, f"layer {gaps[0]} is missing (blocks 0..{n_layer - 1} expected)")
    return CommonSizes(
        n_layer=n_layer,
        vocab_size=dim(tensors, "emb.weight", 0, path),
        n_embd=dim(tensors, "emb.weight", 1, path),
        att_size=dim(tensors, "blocks.0.att.key.weight", 0, path),
        ffn_size=dim(tensors, "blocks.0.ffn.key.weight", 0, path),
    )


def squeeze_vectors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[1, 1, C] mixing/decay vectors become [C], as every reference loader does."""
    return {k: (v.reshape(v.shape[-1]) if v.dim() == 3 and v.shape[0] == 1 and v.shape[1] == 1 else v)
            for k, v in tensors.items()}


def heads(n_head: int, att_size: int, path: str | os.PathLike) -> dict:
    """n_head / head_size, checked: the attention width must split evenly into heads."""
    if n_head <= 0 or att_size % n_head:
        raise CheckpointError(path, f"attention size {att_size} is not divisible by {n_head} heads")
    return {"n_head": n_head, "head_size": att_size // n_head}


def map_suffix(tensors: dict, suffix: str, fn, new_suffix: str | None = None) -> dict:
    """Apply `fn` (in float64, result fp32) to every tensor whose key ends with `suffix`, optionally renaming it;
    on lazy tensors (`checkpoint/lazy.py`) when their values are read."""
    def transform(t: torch.Tensor) -> torch.Tensor:
        return fn(t.double()).float()

    out = {}
    for k, v in tensors.items():
        if k.endswith(suffix):
            out[k[: -len(suffix)] + (new_suffix or suffix)] = v.apply(transform) if hasattr(v, "apply") else transform(v)
        else:
            out[k] = v
    return out
