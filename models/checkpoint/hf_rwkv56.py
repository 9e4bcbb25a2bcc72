"""Hugging Face RWKV-5 / RWKV-6 names (BBuf's remote-code format, `RWKV/v5-Eagle-*-HF`, `RWKV/v6-Finch-*-HF`)
<-> BlinkDL names (docs/rwkv-math.md, "Key maps").

BBuf's `convert_rwkv{5,6}_checkpoint_to_hf.py` only renames: `emb.` -> `rwkv.embeddings.`, `blocks.0.ln0` ->
`rwkv.blocks.0.pre_ln`, `blocks.N.att.` / `ffn.` -> `rwkv.blocks.N.attention.` / `feed_forward.`, `ln_out` ->
`rwkv.ln_out`, `head.weight` unchanged; v5 also spells `time_mix_{k,v,r,g}` as
`time_mix_{key,value,receptance,gate}` (in attention and feed-forward alike). Shapes are unchanged and the
weights are stored un-rescaled (the HF code divides by 2**(layer // rescale_every) at load, in fp16 only), so
the map is names only. Transformers' RWKV-4 shares the outer spelling; `is_bbuf_rwkv56` tells them apart by
the keys only v5/v6 have (per-head `ln_x`, `time_faaaa`, `time_maa_*`).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")

_LONG_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v",
             "time_mix_receptance": "time_mix_r", "time_mix_gate": "time_mix_g"}
_BLOCK = re.compile(r"rwkv\.blocks\.(\d+)\.(pre_ln|ln1|ln2|attention|feed_forward)\.(.+)")
_PARTS = {"pre_ln": "ln0", "attention": "att", "feed_forward": "ffn"}


def is_bbuf_rwkv56(keys: Iterable[str]) -> bool:
    return any(k.startswith("rwkv.blocks.") and k.endswith((".attention.ln_x.weight", ".attention.time_faaaa",
                                                             ".attention.time_maa_x")) for k in keys)


def bbuf_version(keys: Iterable[str]) -> str:
    """"6" when the token shift is data-dependent (`time_maa_*`), else "5"."""
    return "6" if any(".time_maa_" in k for k in keys) else "5"


def bbuf_key(key: str) -> str:
    """BlinkDL name of one BBuf key; unknown keys come back unchanged (reported as unexpected later)."""
    if key == "rwkv.embeddings.weight":
        return "emb.weight"
    if key.startswith("rwkv.ln_out."):
        return key[len("rwkv."):]
    m = _BLOCK.fullmatch(key)
    if not m:
        return key
    layer, part, rest = m.groups()
    return f"blocks.{layer}.{_PARTS.get(part, part)}.{_LONG_MIX.get(rest, rest)}"


def bbuf_to_blinkdl(tensors: Mapping[str, T]) -> dict[str, T]:
    return {bbuf_key(k): v for k, v in tensors.items()}


def blinkdl_to_bbuf_key(key: str, version: str) -> str:
    """The name BBuf's converter gives one BlinkDL key of an RWKV-`version` (5.x or 6) checkpoint."""
    if key == "head.weight":
        return key
    if key == "emb.weight":
        return "rwkv.embeddings.weight"
    if key.startswith("ln_out."):
        return "rwkv." + key
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", key)
    if not m:
        raise KeyError(key)
    layer, part, rest = m.groups()
    part = {v: k for k, v in _PARTS.items()}.get(part, part)
    if version.startswith("5"):
        rest = {v: k for k, v in _LONG_MIX.items()}.get(rest, rest)
    return f"rwkv.blocks.{layer}.{part}.{rest}"
