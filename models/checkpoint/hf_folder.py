"""Which Hugging Face layout a folder holds, its tensors under BlinkDL names, and what its config.json fixes.

Layouts (docs/rwkv-math.md, "Key maps"): transformers' RWKV-4, BBuf's RWKV-5/6 remote code, RWKV-7 in the
fla-hub / rwkv7-hf spelling (with or without the legacy stacked `x_x`) and in the older `attention` spelling.
Detection is by key names; config.json adds the LayerNorm epsilon, tied embeddings, `norm_first` (whether a
missing `pre_norm` means "no ln0") and size checks. Every problem is one CheckpointError naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from rwkv_deploy import limits
from rwkv_deploy.errors import CheckpointError

from .hf_rwkv4 import hf_rwkv4_to_blinkdl
from .hf_rwkv7 import (attention_spelling_to_blinkdl, fla_rwkv7_to_blinkdl, has_pre_norm, has_stacked_mix,
                       is_attention_spelling_rwkv7, is_fla_rwkv7)
from .hf_rwkv56 import bbuf_to_blinkdl, bbuf_version, is_bbuf_rwkv56

CONFIG_NAME = "config.json"
FORMAT_NAMES = {
    "rwkv4": "huggingface-rwkv4 (transformers)",
    "rwkv5": "huggingface-rwkv5 (BBuf remote code)",
    "rwkv6": "huggingface-rwkv6 (BBuf remote code)",
    "rwkv7-fla": "huggingface-rwkv7 (fla)",
    "rwkv7-attention": "huggingface-rwkv7 (attention spelling)",
}
BLINKDL_NAMES_FORMAT = "huggingface (BlinkDL names)"


@dataclass(frozen=True)
class HfLayout:
    """A Hugging Face folder read: its format name, tensors under BlinkDL names, and ModelConfig settings."""

    format: str
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)


def weights_family(keys: Iterable[str]) -> str | None:
    """The Hugging Face layout of these tensor names (a key of FORMAT_NAMES), None for BlinkDL names."""
    keys = list(keys)
    if any(k.startswith("rwkv.") for k in keys):
        return f"rwkv{bbuf_version(keys)}" if is_bbuf_rwkv56(keys) else "rwkv4"
    if is_fla_rwkv7(keys):
        return "rwkv7-fla"
    if is_attention_spelling_rwkv7(keys):
        return "rwkv7-attention"
    return None


def to_blinkdl_names(tensors: Mapping[str, Any], family: str, tie_word_embeddings: bool = False) -> dict[str, Any]:
    if family == "rwkv4":
        return hf_rwkv4_to_blinkdl(tensors)
    if family in ("rwkv5", "rwkv6"):
        return bbuf_to_blinkdl(tensors)
    if family == "rwkv7-fla":
        return fla_rwkv7_to_blinkdl(tensors, tie_word_embeddings)
    return attention_spelling_to_blinkdl(tensors, tie_word_embeddings)


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict; missing, oversized or garbled -> one CheckpointError naming it."""
    path = folder / CONFIG_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(limits.JSON_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read ({exc.strerror or exc}); a Hugging Face folder needs it") from None
    if len(data) > limits.JSON_BYTES:
        raise CheckpointError(path, f"larger than {limits.JSON_BYTES // limits.MIB} MiB; not a model config")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(path, f"not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, f"not a model config (a JSON {type(config).__name__}, expected an object)")
    return config


def hf_folder_layout(folder: Path, raw: Mapping[str, torch.Tensor]) -> HfLayout:
    """Identify the layout of the folder's tensors `raw` and map them to BlinkDL names."""
    config = read_hf_config(folder)
    cfg_path = folder / CONFIG_NAME
    family = weights_family(raw)
    if family is None:
        if "emb.weight" in raw:
            return HfLayout(BLINKDL_NAMES_FORMAT, dict(raw), _eps_settings(config, cfg_path))
        sample = ", ".join(sorted(raw)[:3])
        raise CheckpointError(folder, f"a Hugging Face folder, but not an RWKV layout this reads (architectures "
                                      f"{config.get('architectures')}, model_type {config.get('model_type')!r}; "
                                      f"keys such as {sample})")
    _check_model_type(config, family, cfg_path)
    tie = _flag(config, "tie_word_embeddings", False, cfg_path)
    tensors = to_blinkdl_names(raw, family, tie)
    settings = _eps_settings(config, cfg_path)
    name = FORMAT_NAMES[family]
    if family.startswith("rwkv7"):
        settings.update(_pre_norm(config, raw, tensors, cfg_path))
        if has_stacked_mix(raw):
            name = name[:-1] + ", stacked x_x)"
    if family in ("rwkv5", "rwkv6"):
        settings.update(_bbuf_settings(config, tensors, cfg_path))
    _check_sizes(config, tensors, cfg_path)
    return HfLayout(name, tensors, settings)


def _check_model_type(config: dict, family: str, path: Path) -> None:
    model_type = config.get("model_type")
    expected = {"rwkv4": ("rwkv",), "rwkv5": ("rwkv5",), "rwkv6": ("rwkv6",)}.get(family, ("rwkv7", "rwkv7_fla"))
    known = ("rwkv", "rwkv5", "rwkv6", "rwkv7", "rwkv7_fla")
    if model_type in known and model_type not in expected:
        raise CheckpointError(path, f"model_type {model_type!r}, but the weights are {FORMAT_NAMES[family]} "
                                    f"(by their key names)")


def _number(config: dict, key: str, path: Path) -> float | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(path, f"{key} is {value!r}, expected a number")
    return float(value)


def _flag(config: dict, key: str, default: bool, path: Path) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(path, f"{key} is {value!r}, expected true or false")
    return value


def _eps_settings(config: dict, path: Path) -> dict[str, Any]:
    """The LayerNorm epsilon (`norm_eps` in fla/rwkv7-hf, `layer_norm_epsilon` elsewhere) -> ModelConfig.ln_eps.
    The per-head GroupNorm (ln_x) epsilon is not taken from it: see docs/rwkv-math.md, "Key maps"."""
    for key in ("norm_eps", "layer_norm_epsilon"):
        eps = _number(config, key, path)
        if eps is not None:
            if not 0 < eps < 1:
                raise CheckpointError(path, f"{key} is {eps}, expected a small positive number")
            return {"ln_eps": eps}
    return {}


def _pre_norm(config: dict, raw: Mapping[str, torch.Tensor], tensors: dict[str, torch.Tensor],
              path: Path) -> dict[str, Any]:
    """fla builds layer 0's `pre_norm` only when `norm_first` is true; with it false the embedding goes straight
    into layer 0 (no ln0). A missing `pre_norm` with `norm_first` true (the default) is what fla and rwkv7-hf
    then run: a freshly initialised LayerNorm (weight 1, bias 0)."""
    if has_pre_norm(raw):
        return {}
    if not _flag(config, "norm_first", True, path):
        return {"has_ln0": False}
    emb = tensors.get("emb.weight")
    if emb is not None and emb.dim() == 2:
        tensors["blocks.0.ln0.weight"] = torch.ones(emb.shape[1])
        tensors["blocks.0.ln0.bias"] = torch.zeros(emb.shape[1])
    return {}


def _bbuf_settings(config: dict, tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """BBuf's ln_x epsilon is 1e-5 * head_size_divisor**2 (64e-5 at the default divisor 8, as BlinkDL's); its
    FFN width is `intermediate_size`, or int(3.5 * C) // 32 * 32 when null."""
    settings: dict[str, Any] = {}
    divisor = _number(config, "head_size_divisor", path)
    if divisor is not None:
        if divisor <= 0:
            raise CheckpointError(path, f"head_size_divisor is {divisor}, expected a positive number")
        settings["ln_x_eps"] = 1e-5 * divisor ** 2
    key, emb = tensors.get("blocks.0.ffn.key.weight"), tensors.get("emb.weight")
    if key is not None and emb is not None and key.dim() == 2 and emb.dim() == 2 and "intermediate_size" in config:
        size = _number(config, "intermediate_size", path)
        expected = int(size) if size is not None else int(emb.shape[1] * 3.5) // 32 * 32
        if key.shape[0] != expected:
            said = f"intermediate_size {int(size)}" if size is not None else \
                f"intermediate_size null (3.5 x {emb.shape[1]} rounded down to 32: {expected})"
            raise CheckpointError(path, f"{said}, but the feed-forward key weight has {key.shape[0]} rows")
    head = tensors.get("blocks.0.att.time_faaaa")
    size = _number(config, "head_size", path)
    if head is not None and size is not None and head.dim() == 2 and head.shape[-1] != size:
        raise CheckpointError(path, f"head_size {int(size)}, but time_faaaa has heads of {head.shape[-1]}")
    return settings


def _check_sizes(config: dict, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """hidden_size and num_hidden_layers, where given, must be those of the weights (else the folder is broken)."""
    emb = tensors.get("emb.weight")
    hidden = _number(config, "hidden_size", path)
    if hidden is not None and emb is not None and emb.dim() == 2 and emb.shape[1] != hidden:
        raise CheckpointError(path, f"hidden_size {int(hidden)}, but the embedding is {emb.shape[1]} wide")
    layers = _number(config, "num_hidden_layers", path)
    found = {int(k.split(".")[1]) for k in tensors if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if layers is not None and found and len(found) != layers:
        raise CheckpointError(path, f"num_hidden_layers {int(layers)}, but the weights have {len(found)} layers")
