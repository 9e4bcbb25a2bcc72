"""Which RWKV version a state dict is, from its keys and shapes alone (docs/rwkv-math.md §2.1)."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from rwkv_deploy.errors import CheckpointError

CORE_KEYS = ("emb.weight", "head.weight", "ln_out.weight", "blocks.0.ln1.weight")


def detect_version(tensors: Mapping[str, Any], path: str | os.PathLike = "<state dict>") -> str:
    """Return "4", "5.0", "5.1", "5.2", "6" or "7"; raise CheckpointError for anything else.

    Only keys and shapes are read, so torch tensors and numpy arrays (rwkv.cpp files as stored) both work.
    """
    missing = [k for k in CORE_KEYS if k not in tensors]
    if missing:
        raise CheckpointError(path, f"not an RWKV checkpoint: missing keys {', '.join(missing)}")
    keys = list(tensors)
    if any(k.endswith(("ffn.s_emb.weight", "ffn.s_emb_x.weight")) for k in keys):
        raise CheckpointError(path, "RWKV-7 DeepEmbed (rwkv7a/rwkv7b) checkpoints are not supported yet")
    if any(k.endswith(("att.r_k", "att.k_k")) for k in keys):
        return "7"
    if any("time_maa" in k for k in keys):
        return "6"
    if any("ln_x" in k for k in keys):
        decay = tensors.get("blocks.0.att.time_decay")
        if decay is None:
            raise CheckpointError(path, "RWKV-5 checkpoint without blocks.0.att.time_decay")
        if not any(k.endswith("att.gate.weight") for k in keys):
            return "5.0"
        att_size = tensors["blocks.0.att.key.weight"].shape[0] if "blocks.0.att.key.weight" in tensors else -1
        return "5.2" if math.prod(decay.shape) == att_size else "5.1"  # per-channel decay vs one per head
    if any(k.startswith("blocks.0.att.time_mix_k") for k in keys):
        return "4"
    raise CheckpointError(path, "unknown RWKV version: none of the v4/v5/v6/v7 attention keys are present")
