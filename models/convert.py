"""`rwkv-deploy convert`: move a checkpoint between the formats the RWKV tools read.

- `pth`: a BlinkDL state dict (the names, shapes and stored dtypes of BlinkDL's released files), for the `rwkv`
  package, rwkv.cpp's converter, rwkv7-hf's converter and every tool that starts from BlinkDL's files.
- `hf`: a Hugging Face folder (config.json + model.safetensors) in the layout the version is published in, so
  llama.cpp's `convert_hf_to_gguf.py` (RWKV-6/7) and the HF model code read it: RWKV-7 as fla-hub / rwkv7-hf
  (`RWKV7ForCausalLM`), RWKV-5.2 / RWKV-6 as BBuf's remote code (`Rwkv5ForCausalLM` / `Rwkv6ForCausalLM`,
  weights un-rescaled), RWKV-4 as transformers (`RwkvForCausalLM`); with the World vocabulary file
  (`rwkv_vocab_v20230424.txt`, which llama.cpp's converter reads from the folder) when the vocabulary is 65536.

Key maps: docs/rwkv-math.md, "Key maps". The output is written to a temporary name and renamed into place,
never over the input; before the rename it is read back and must load as exactly the same model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import refuse_link, remove_leftover_files, write_atomically
from rwkv_deploy.staging import staged_directory
from rwkv_deploy.tokenization.world import WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE

from .checkpoint.hf_folder import CONFIG_NAME
from .checkpoint.hf_rwkv4 import blinkdl_to_hf_rwkv4_key
from .checkpoint.hf_rwkv7 import blinkdl_to_fla_key
from .checkpoint.hf_rwkv56 import blinkdl_to_bbuf_key
from .config import ModelConfig
from .loading import SourceTensors, canonicalize, read_source

TARGETS = ("hf", "pth")
WEIGHTS_NAME = "model.safetensors"
WORLD_VOCAB_LICENSE = WORLD_VOCAB_FILE.parent / "LICENSE-rwkv-vocab.txt"
DEFAULT_LN_EPS, DEFAULT_LN_X_EPS = ModelConfig.__dataclass_fields__["ln_eps"].default, \
    ModelConfig.__dataclass_fields__["ln_x_eps"].default

# BlinkDL stores these per-channel vectors as [1, 1, C] (the training modules' parameters)
_BLINKDL_VECTORS = {
    "7": ("att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g", "att.w0", "att.a0", "att.v0",
          "att.k_k", "att.k_a", "ffn.x_k"),
    "6": ("att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
          "att.time_maa_g", "att.time_decay", "ffn.time_maa_k", "ffn.time_maa_r"),
    "5": ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g", "ffn.time_mix_k", "ffn.time_mix_r"),
}
_HF_FORMATS = {"7": "huggingface-rwkv7 (fla)", "6": "huggingface-rwkv6 (BBuf remote code)",
               "5.2": "huggingface-rwkv5 (BBuf remote code)", "4": "huggingface-rwkv4 (transformers)"}


class ConvertError(RefusedError):
    """A conversion asked for that cannot be made faithfully, or an output that may not be written."""


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    format: str  # the output's format, as `inspect` names it
    source_format: str
    version: str
    tensors: int


def convert_checkpoint(checkpoint: str | os.PathLike, target: str, out: str | os.PathLike, force: bool = False,
                       max_params: int | None = None) -> ConvertResult:
    """Write `checkpoint` (any format this reads) as `target` ("hf" or "pth") at `out`, checked by reading back."""
    if target not in TARGETS:
        raise ConvertError(f"--to {target}: expected one of {', '.join(TARGETS)}")
    out = Path(out)
    source = read_source(checkpoint, max_params)
    config, canonical = canonicalize(source.tensors, source.path, **source.settings)
    _check_representable(config, target, source)
    _check_out(out, source.path, target, force)
    state = blinkdl_state_dict({k: t.load() for k, t in source.tensors.items()}, config.version)
    if target == "pth":
        count, fmt = _write_pth(state, out, config, canonical), "pytorch"
    else:
        count, fmt = _write_hf(state, out, config, canonical, force), _HF_FORMATS[config.version]
    return ConvertResult(out, fmt, source.format, config.version, count)


def blinkdl_state_dict(tensors: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    """BlinkDL names (as read) with BlinkDL's shapes: per-channel vectors as [1, 1, C]; dtypes kept."""
    vectors = _BLINKDL_VECTORS.get(version[0], ())
    out = {}
    for key, t in tensors.items():
        suffix = key.split(".", 2)[-1] if key.startswith("blocks.") else key
        if suffix in vectors and t.numel() == t.shape[-1]:
            t = t.reshape(1, 1, -1)
        out[key] = t.contiguous()
    return out


def _check_representable(config: ModelConfig, target: str, source: SourceTensors) -> None:
    """Refuse settings the target format has no way to carry, before anything is written."""
    where = f"{source.path} ({source.format})"
    if target == "pth":
        if not config.has_ln0:
            raise ConvertError(f"{where}: has no ln0 (fla norm_first false); a BlinkDL .pth always applies one")
        if not math.isclose(config.ln_eps, DEFAULT_LN_EPS):
            raise ConvertError(f"{where}: LayerNorm epsilon {config.ln_eps:g}; a BlinkDL .pth always means "
                               f"{DEFAULT_LN_EPS:g}")
        if not math.isclose(config.ln_x_eps, DEFAULT_LN_X_EPS):
            raise ConvertError(f"{where}: ln_x epsilon {config.ln_x_eps:g}; a BlinkDL .pth always means "
                               f"{DEFAULT_LN_X_EPS:g}")
        return
    if config.version not in _HF_FORMATS:
        raise ConvertError(f"{where}: RWKV-{config.version} has no Hugging Face format (BBuf's remote code is "
                           "RWKV-5.2 only); convert to pth instead")
    if config.has_time_state:
        raise ConvertError(f"{where}: carries a tuned state (time_state), which no Hugging Face RWKV format holds")
    if config.version == "7" and not math.isclose(config.ln_x_eps, DEFAULT_LN_X_EPS):
        raise ConvertError(f"{where}: ln_x epsilon {config.ln_x_eps:g}; the RWKV-7 HF format has no field for it")


def _check_out(out: Path, source: Path, target: str, force: bool) -> None:
    refuse_link(out, " (convert's output)")
    s, t = source.resolve(), out.resolve()
    if t == s or t.is_relative_to(s) or s.is_relative_to(t):
        raise ConvertError(f"{out}: is, holds or lies inside the input {source}; choose another output")
    if not out.exists():
        return
    if target == "pth" and not out.is_file():
        raise ConvertError(f"{out}: exists and is not a file")
    if target == "hf":
        if not out.is_dir():
            raise ConvertError(f"{out}: exists and is not a directory")
        if not any(out.iterdir()):
            return
        if not (out / CONFIG_NAME).is_file():
            raise ConvertError(f"{out}: exists, is not empty and is not a Hugging Face folder (no {CONFIG_NAME}); "
                               "--force replaces only those: choose another output")
    if not force:
        raise ConvertError(f"{out}: exists (use --force to replace it)")


# -- read back ------------------------------------------------------------------------------------------

def _comparable(config: ModelConfig) -> dict:
    """The configuration as it defines the model: a one-layer RWKV-7's v LoRA rank is that of layer 0's unused
    v1, which the HF layout leaves out."""
    out = config.to_dict()
    if config.version == "7" and config.n_layer == 1:
        out["lora"] = {**out["lora"], "v": 0}
    return out


def _read_back(path: Path, out: Path, config: ModelConfig, canonical: dict[str, torch.Tensor]) -> None:
    """The checkpoint written at `path` (for `out`) must load as the same model: the same configuration and
    identical tensors."""
    source = read_source(path, max_params=None)
    got_config, got = canonicalize(source.tensors, path, **source.settings)
    a, b = _comparable(config), _comparable(got_config)
    differ = [k for k in a if not (math.isclose(a[k], b[k]) if isinstance(a[k], float) else a[k] == b[k])]
    if differ:
        raise ConvertError(f"{out}: read back with a different {differ[0]} ({b[differ[0]]!r}, expected "
                           f"{a[differ[0]]!r}); nothing was written")
    wrong = [k for k in canonical if k not in got or not torch.equal(canonical[k], got[k])]
    wrong += sorted(got.keys() - canonical.keys())
    if wrong:
        raise ConvertError(f"{out}: read back with a different {wrong[0]}; nothing was written")


# -- .pth ------------------------------------------------------------------------------------------------

def _write_pth(state: dict[str, torch.Tensor], out: Path, config: ModelConfig,
               canonical: dict[str, torch.Tensor]) -> int:
    """torch.save to a temporary name next to `out`, read back, then rename into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftover_files(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-check")
    try:
        write_atomically(tmp, lambda f: torch.save(state, f))
        _read_back(tmp, out, config, canonical)
        refuse_link(out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(state)


# -- Hugging Face ------------------------------------------------------------------------------------------

def _write_hf(state: dict[str, torch.Tensor], out: Path, config: ModelConfig, canonical: dict[str, torch.Tensor],
              force: bool) -> int:
    from safetensors.torch import save_file

    tensors, hf_config = _hf_layout(state, config)
    with staged_directory(out, replace=force) as tmp:
        save_file(_unshared(tensors), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n")
        if config.vocab_size == WORLD_VOCAB_SIZE:
            shutil.copyfile(WORLD_VOCAB_FILE, tmp / WORLD_VOCAB_FILE.name)
            shutil.copyfile(WORLD_VOCAB_LICENSE, tmp / WORLD_VOCAB_LICENSE.name)
        _read_back(tmp, out, config, canonical)
    return len(tensors)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors stores no aliases: a tensor sharing memory with an earlier one (a tied head) is copied."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _hf_layout(state: dict[str, torch.Tensor], config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    if config.version == "7":
        return _fla_tensors(state), _fla_config(config, state)
    if config.version == "4":
        return {blinkdl_to_hf_rwkv4_key(k): v for k, v in state.items()}, _transformers_rwkv4_config(config)
    return {blinkdl_to_bbuf_key(k, config.version): v for k, v in state.items()}, _bbuf_config(config)


def _fla_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla / rwkv7-hf names and shapes: LoRA matrices transposed, x_* [1, 1, C], every other vector [C];
    layer 0's unused v0/v1/v2 left out (rwkv7-hf's model has no v_lora there)."""
    out = {}
    for key, t in state.items():
        if key in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            continue
        name, transposed = blinkdl_to_fla_key(key)
        if transposed:
            t = t.t().contiguous()
        if re.fullmatch(r"model\.layers\.\d+\.attn\.x_[rwkvag]", name):
            t = t.reshape(1, 1, -1)
        elif t.dim() == 3 and t.numel() == t.shape[-1]:
            t = t.reshape(-1)
        out[name] = t
    return out


def _dtype_name(state: dict[str, torch.Tensor]) -> str:
    return str(state["emb.weight"].dtype).replace("torch.", "")


def _fla_config(config: ModelConfig, state: dict[str, torch.Tensor]) -> dict:
    """The fields rwkv7-hf 0.9.0's converter writes (and fla's RWKV7Config reads), plus `norm_first` when there
    is no ln0. Its GroupNorm epsilon is head_dim * norm_eps: BlinkDL's 64e-5 only at head size 64."""
    c, att, layers = config.n_embd, config.att_size, config.n_layer
    return {
        "architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7",
        "vocab_size": config.vocab_size, "hidden_size": c, "num_hidden_layers": layers,
        "num_heads": config.n_head, "num_attention_heads": config.n_head, "head_dim": config.head_size,
        "attention_hidden_size": att, "intermediate_size": config.ffn_size, "hidden_ratio": config.ffn_size / c,
        "decay_low_rank_dim": config.lora["w"], "a_low_rank_dim": config.lora["a"],
        "v_low_rank_dim": config.lora["v"] or 32, "gate_low_rank_dim": config.lora["g"],
        "value_dim": [att] * layers, "norm_eps": config.ln_eps, "norm_bias": True, "norm_first": config.has_ln0,
        "hidden_act": "sqrelu", "attn_mode": "chunk", "fuse_norm": False, "tie_word_embeddings": False,
        "use_cache": True, "pad_token_id": 0, "eos_token_id": 0, "bos_token_id": 1,
        "torch_dtype": _dtype_name(state),
    }


def _bbuf_config(config: ModelConfig) -> dict:
    """config.json of BBuf's RWKV-5/6 HF repositories; `intermediate_size` null when it is the default
    int(3.5 C) // 32 * 32, `head_size_divisor` only when ln_x's epsilon is not BlinkDL's 1e-5 * 8**2."""
    model_type = "rwkv5" if config.version.startswith("5") else "rwkv6"
    default_ffn = int(config.n_embd * 3.5) // 32 * 32
    out = {
        "architectures": ["Rwkv5ForCausalLM" if model_type == "rwkv5" else "Rwkv6ForCausalLM"],
        "model_type": model_type, "attention_hidden_size": config.att_size, "head_size": config.head_size,
        "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer, "vocab_size": config.vocab_size,
        "intermediate_size": None if config.ffn_size == default_ffn else config.ffn_size,
        "layer_norm_epsilon": config.ln_eps, "rescale_every": 6, "context_length": 4096, "bos_token_id": 0,
        "eos_token_id": 0, "tie_word_embeddings": False, "use_cache": True,
    }
    if not math.isclose(config.ln_x_eps, DEFAULT_LN_X_EPS):
        out["head_size_divisor"] = math.sqrt(config.ln_x_eps / 1e-5)
    return out


def _transformers_rwkv4_config(config: ModelConfig) -> dict:
    """transformers' RwkvConfig fields (model_type "rwkv")."""
    return {
        "architectures": ["RwkvForCausalLM"], "model_type": "rwkv", "vocab_size": config.vocab_size,
        "context_length": 1024, "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer,
        "attention_hidden_size": config.att_size, "intermediate_size": config.ffn_size,
        "layer_norm_epsilon": config.ln_eps, "bos_token_id": 0, "eos_token_id": 0, "rescale_every": 6,
        "tie_word_embeddings": False, "use_cache": True,
    }
