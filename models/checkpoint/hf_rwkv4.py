"""Hugging Face transformers RWKV-4 names -> BlinkDL names (the transformers converter, inverted)."""

from __future__ import annotations

import re

import torch

_BLOCK_RENAMES = (
    ("attention.time_mix_key", "att.time_mix_k"),
    ("attention.time_mix_value", "att.time_mix_v"),
    ("attention.time_mix_receptance", "att.time_mix_r"),
    ("feed_forward.time_mix_key", "ffn.time_mix_k"),
    ("feed_forward.time_mix_receptance", "ffn.time_mix_r"),
    ("pre_ln.", "ln0."),
    ("attention.", "att."),
    ("feed_forward.", "ffn."),
)


def hf_key_to_blinkdl(key: str) -> str:
    if key == "rwkv.embeddings.weight":
        return "emb.weight"
    if key.startswith("rwkv.ln_out."):
        return key[len("rwkv."):]
    m = re.match(r"rwkv\.blocks\.(\d+)\.(.*)", key)
    if not m:
        return key  # head.weight and anything unknown (reported later as unexpected)
    rest = m.group(2)
    for old, new in _BLOCK_RENAMES:
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    return f"blocks.{m.group(1)}.{rest}"


def hf_rwkv4_to_blinkdl(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {hf_key_to_blinkdl(k): v for k, v in tensors.items()}


def blinkdl_to_hf_rwkv4_key(key: str) -> str:
    """The transformers RWKV-4 name of one BlinkDL key (what transformers' converter writes)."""
    if key == "emb.weight":
        return "rwkv.embeddings.weight"
    if key.startswith("ln_out."):
        return "rwkv." + key
    m = re.match(r"blocks\.(\d+)\.(.*)", key)
    if not m:
        return key  # head.weight
    rest = m.group(2)
    for hf, blinkdl in _BLOCK_RENAMES:
        if rest.startswith(blinkdl):
            rest = hf + rest[len(blinkdl):]
            break
    return f"rwkv.blocks.{m.group(1)}.{rest}"
