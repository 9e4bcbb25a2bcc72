"""Hugging Face RWKV-7 names -> BlinkDL names, for both spellings on the hub (docs/rwkv-math.md, "Key maps").

- fla-hub / PyPI `rwkv7-hf` (`RWKV7ForCausalLM`): `model.layers.N.attn.{r,k,v,o}_proj`, LoRA pairs as
  `{w,a,v,g}_lora.lora.{0,2}.weight` stored as torch Linear weights, i.e. TRANSPOSED against BlinkDL's
  w1 [C, D] / w2 [D, C], with `lora.2.bias` = w0/a0/v0; `g_norm` = ln_x; `pre_norm` = ln0 (may be absent);
  older fla revisions stack the six token-shift mixes as one `attn.x_x` [6, C] (rows r, w, k, v, a, g).
- The older spelling (RWKV-block `Rwkv7ForCausalLM`, as llama.cpp's tensor map lists it): BlinkDL names
  inside `model.layers.N.{ln1,ln2,attention,feed_forward}`, `model.pre_ln`, `model.ln_out`, LoRA in BlinkDL
  orientation.

The maps touch tensors only through `.t()` and first-axis indexing (the lazy-loading contract): they work on
tensors that are read from disk on demand.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")

MIX_ROWS = ("r", "w", "k", "v", "a", "g")  # row order of the legacy stacked `x_x`, as fla's migration reads it
_FLA_ATTENTION = {"r_proj": "receptance", "k_proj": "key", "v_proj": "value", "o_proj": "output", "g_norm": "ln_x"}
_LORA_PARTS = {"lora.0.weight": "1", "lora.2.weight": "2", "lora.2.bias": "0"}
_TOP_LEVEL = {"model.embeddings.weight": "emb.weight", "lm_head.weight": "head.weight"}
_FLA_LAYER = re.compile(r"model\.layers\.(\d+)\.(pre_norm|attn_norm|ffn_norm|attn|ffn)\.(.+)")
_OLD_LAYER = re.compile(r"model\.layers\.(\d+)\.(ln1|ln2|attention|feed_forward)\.(.+)")
_STACKED = re.compile(r"model\.layers\.(\d+)\.(?:attn|attention)\.x_x")
_TOP_LEVEL_BACK = {v: k for k, v in _TOP_LEVEL.items()}
_FLA_ATTENTION_BACK = {v: k for k, v in _FLA_ATTENTION.items()}
_LORA_PARTS_BACK = {v: k for k, v in _LORA_PARTS.items()}


def is_fla_rwkv7(keys: Iterable[str]) -> bool:
    return any(_FLA_LAYER.fullmatch(k) and ".attn." in k for k in keys)


def is_attention_spelling_rwkv7(keys: Iterable[str]) -> bool:
    return any(k.startswith("model.layers.") and ".attention." in k for k in keys)


def has_stacked_mix(keys: Iterable[str]) -> bool:
    return any(_STACKED.fullmatch(k) for k in keys)


def has_pre_norm(keys: Iterable[str]) -> bool:
    return any(k.startswith(("model.layers.0.pre_norm.", "model.pre_ln.")) for k in keys)


def fla_key(key: str) -> tuple[str, bool]:
    """(BlinkDL name, whether the tensor is stored transposed) of one fla / rwkv7-hf key; unknown keys come back
    unchanged (and are reported as unexpected by the loader)."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key], False
    if key.startswith("model.norm."):
        return "ln_out." + key[len("model.norm."):], False
    m = _FLA_LAYER.fullmatch(key)
    if not m:
        return key, False
    layer, part, rest = m.groups()
    prefix = f"blocks.{layer}."
    if part in ("pre_norm", "attn_norm", "ffn_norm"):
        return prefix + {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}[part] + "." + rest, False
    if part == "ffn":
        return prefix + "ffn." + rest, False
    lora = re.fullmatch(r"([wavg])_lora\.(lora\.[02]\.(?:weight|bias))", rest)
    if lora and lora.group(2) in _LORA_PARTS:
        number = _LORA_PARTS[lora.group(2)]
        return f"{prefix}att.{lora.group(1)}{number}", number != "0"
    module, _, tail = rest.partition(".")
    if module in _FLA_ATTENTION and tail:
        return f"{prefix}att.{_FLA_ATTENTION[module]}.{tail}", False
    return prefix + "att." + rest, False


def attention_spelling_key(key: str) -> str:
    """BlinkDL name of one key of the older `model.layers.N.attention.*` spelling."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    for prefix, new in (("model.pre_ln.", "blocks.0.ln0."), ("model.ln_out.", "ln_out.")):
        if key.startswith(prefix):
            return new + key[len(prefix):]
    m = _OLD_LAYER.fullmatch(key)
    if not m:
        return key
    layer, part, rest = m.groups()
    part = {"attention": "att", "feed_forward": "ffn"}.get(part, part)
    return f"blocks.{layer}.{part}.{rest}"


def _unstack(layer: str, stacked: T) -> dict[str, T]:
    return {f"blocks.{layer}.att.x_{name}": stacked[i] for i, name in enumerate(MIX_ROWS)}  # type: ignore[index]


def fla_rwkv7_to_blinkdl(tensors: Mapping[str, T], tie_word_embeddings: bool = False) -> dict[str, T]:
    """fla-hub / rwkv7-hf tensors under BlinkDL names, LoRA matrices transposed back; with
    `tie_word_embeddings` and no `lm_head.weight`, the head is the embedding."""
    out: dict[str, T] = {}
    for key, tensor in tensors.items():
        if (m := _STACKED.fullmatch(key)):
            out.update(_unstack(m.group(1), tensor))
            continue
        name, transposed = fla_key(key)
        out[name] = tensor.t() if transposed else tensor  # type: ignore[attr-defined]
    return _tied(out, tie_word_embeddings)


def attention_spelling_to_blinkdl(tensors: Mapping[str, T], tie_word_embeddings: bool = False) -> dict[str, T]:
    """Older-spelling tensors under BlinkDL names (already in BlinkDL orientation)."""
    out: dict[str, T] = {}
    for key, tensor in tensors.items():
        if (m := _STACKED.fullmatch(key)):
            out.update(_unstack(m.group(1), tensor))
        else:
            out[attention_spelling_key(key)] = tensor
    return _tied(out, tie_word_embeddings)


def _tied(out: dict[str, T], tie_word_embeddings: bool) -> dict[str, T]:
    if tie_word_embeddings and "head.weight" not in out and "emb.weight" in out:
        out["head.weight"] = out["emb.weight"]
    return out


# -- BlinkDL -> fla (what `convert --to hf` writes) --------------------------------------------------------

def blinkdl_to_fla_key(key: str) -> tuple[str, bool]:
    """The fla / rwkv7-hf name of one BlinkDL key and whether its tensor must be transposed."""
    if key in _TOP_LEVEL_BACK:
        return _TOP_LEVEL_BACK[key], False
    if key.startswith("ln_out."):
        return "model.norm." + key[len("ln_out."):], False
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", key)
    if not m:
        raise KeyError(key)
    layer, part, rest = m.groups()
    prefix = f"model.layers.{layer}."
    if part in ("ln0", "ln1", "ln2"):
        return prefix + {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}[part] + "." + rest, False
    if part == "ffn":
        return prefix + "ffn." + rest, False
    lora = re.fullmatch(r"([wavg])([012])", rest)
    if lora:
        part_name = _LORA_PARTS_BACK[lora.group(2)]
        return f"{prefix}attn.{lora.group(1)}_lora.{part_name}", lora.group(2) != "0"
    module, _, tail = rest.partition(".")
    if module in _FLA_ATTENTION_BACK and tail:
        return f"{prefix}attn.{_FLA_ATTENTION_BACK[module]}.{tail}", False
    return prefix + "attn." + rest, False
