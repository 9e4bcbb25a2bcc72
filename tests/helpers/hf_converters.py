"""Hugging Face folders written the way the public converters write them, from a BlinkDL state dict.

Independent of the production readers (rwkv_deploy.models.checkpoint.hf_*): the names here restate the
converters' mapping from the facts (docs/rwkv-math.md, "Key maps"), so a test comparing the two catches a
mistake in either.

- `write_bbuf_rwkv_folder`: RWKV-5.2 / RWKV-6 in the remote-code format of BBuf's
  `convert_rwkv{5,6}_checkpoint_to_hf.py` (the `RWKV/v5-Eagle-*-HF`, `RWKV/v6-Finch-*-HF` repositories):
  `rwkv.` prefix, `att`/`ffn` -> `attention`/`feed_forward`, `ln0` -> `pre_ln`, v5's `time_mix_{k,v,r,g}` ->
  `time_mix_{key,value,receptance,gate}`, `head.weight` unchanged, shapes unchanged, weights NOT rescaled.
- `write_rwkv7_hf_folder`: RWKV-7 by PyPI `rwkv7-hf`'s own converter (the real one, run in-process).
- `restack_x_x` / `respell_rwkv7_attention`: the two other RWKV-7 spellings, derived from an fla-format
  folder: the legacy stacked `attn.x_x` [6, C], and the older `model.layers.N.attention.*` spelling with
  BlinkDL names inside (RWKV-block / llama.cpp's tensor map).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

Tensors = dict[str, torch.Tensor]

_V5_MIX_NAMES = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value",
                 "time_mix_r": "time_mix_receptance", "time_mix_g": "time_mix_gate"}


def bbuf_key(name: str, version: str) -> str:
    """One BlinkDL key as BBuf's converter names it (version "5.2" or "6")."""
    if name.startswith("emb."):
        name = "embeddings." + name[len("emb."):]
    if name.startswith("blocks.0.ln0"):
        name = "blocks.0.pre_ln" + name[len("blocks.0.ln0"):]
    name = re.sub(r"^blocks\.(\d+)\.att\.", r"blocks.\1.attention.", name)
    name = re.sub(r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.feed_forward.", name)
    if version.startswith("5"):
        last = name.rsplit(".", 1)
        if len(last) == 2 and last[1] in _V5_MIX_NAMES:
            name = f"{last[0]}.{_V5_MIX_NAMES[last[1]]}"
    return name if name == "head.weight" else "rwkv." + name


def bbuf_config(pth: Tensors, version: str, rescale_every: int = 6, layer_norm_epsilon: float = 1e-5,
                intermediate_size: int | None = None) -> dict:
    """config.json as the published v5/v6 HF repositories carry it (BBuf's `rwkv{5,6}_model/config.json`)."""
    model_type = "rwkv5" if version.startswith("5") else "rwkv6"
    arch = "Rwkv5ForCausalLM" if model_type == "rwkv5" else "Rwkv6ForCausalLM"
    n_layer = 1 + max(int(m.group(1)) for k in pth if (m := re.match(r"blocks\.(\d+)\.", k)))
    vocab, hidden = pth["emb.weight"].shape
    att = pth["blocks.0.att.key.weight"].shape[0]
    head_size = pth["blocks.0.att.time_faaaa"].shape[-1]
    return {
        "architectures": [arch],
        "auto_map": {"AutoConfig": f"configuration_{model_type}.{arch[:-len('ForCausalLM')]}Config",
                     "AutoModelForCausalLM": f"modeling_{model_type}.{arch}"},
        "attention_hidden_size": att, "bos_token_id": 0, "context_length": 4096, "eos_token_id": 0,
        "head_size": head_size, "hidden_size": hidden, "intermediate_size": intermediate_size,
        "layer_norm_epsilon": layer_norm_epsilon, "model_type": model_type, "num_hidden_layers": n_layer,
        "rescale_every": rescale_every, "tie_word_embeddings": False, "transformers_version": "4.33.1",
        "use_cache": True, "vocab_size": vocab,
    }


def write_bbuf_rwkv_folder(pth_tensors: Tensors, out_dir: str | Path, version: str, *, rescale_every: int = 6,
                           weights: str = "bin", shards: int = 1, intermediate_size: int | None = None) -> Path:
    """Write `pth_tensors` (a BlinkDL v5.2 or v6 state dict) as BBuf's converter does: `pytorch_model.bin`
    (`weights="bin"`, the converter's torch.save) or `model.safetensors`; `shards` > 1 splits the tensors
    into that many files with the converter's `*.index.json`. Returns the folder."""
    if not (version.startswith("5") or version == "6"):
        raise ValueError(f"BBuf's converters write RWKV-5 and RWKV-6, not {version}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = {bbuf_key(k, version): v.contiguous() for k, v in pth_tensors.items()}
    config = bbuf_config(pth_tensors, version, rescale_every, intermediate_size=intermediate_size)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_weights(hf, out, weights, shards)
    return out


def write_weights(tensors: Tensors, out: Path, weights: str = "safetensors", shards: int = 1) -> None:
    """Weights in HF's file layout: one file, or `shards` files plus the `weight_map` index."""
    from safetensors.torch import save_file

    stem, suffix = ("pytorch_model", "bin") if weights == "bin" else ("model", "safetensors")

    def save(part: Tensors, path: Path) -> None:
        if weights == "bin":
            torch.save(part, path)
        else:
            save_file(part, path, metadata={"format": "pt"})

    if shards <= 1:
        save(tensors, out / f"{stem}.{suffix}")
        return
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        part_names = names[i::shards]
        file = f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
        save({k: tensors[k] for k in part_names}, out / file)
        weight_map.update({k: file for k in part_names})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# -- RWKV-7 ----------------------------------------------------------------------------------------------

def write_rwkv7_hf_folder(pth_path: str | Path, out_dir: str | Path, *, max_shard_size: str = "1000GB",
                          vocab_file: str | Path | None = None) -> Path:
    """Run PyPI `rwkv7-hf`'s converter (0.9.0) on a BlinkDL RWKV-7 `.pth`: an fla-format folder, fp32."""
    from rwkv7_hf.converter import main

    args = ["--input", str(pth_path), "--output", str(out_dir), "--precision", "fp32",
            "--max-shard-size", max_shard_size]
    if vocab_file is not None:
        args += ["--vocab-file", str(vocab_file)]
    main(args)
    return Path(out_dir)


def read_folder_tensors(folder: Path) -> Tensors:
    """Every tensor of an HF folder's safetensors files (one or sharded)."""
    from safetensors.torch import load_file

    tensors: Tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _copy_without_weights(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)


def restack_x_x(fla_folder: str | Path, out_dir: str | Path) -> Path:
    """The legacy fla spelling: per layer one `attn.x_x` [6, C] (rows r, w, k, v, a, g) instead of six `attn.x_*`."""
    src, out = Path(fla_folder), Path(out_dir)
    _copy_without_weights(src, out)
    tensors = read_folder_tensors(src)
    stacked: Tensors = {}
    for key, value in tensors.items():
        m = re.match(r"(model\.layers\.\d+\.attn)\.x_([rwkvag])$", key)
        if not m:
            stacked[key] = value
        elif m.group(2) == "r":
            stacked[f"{m.group(1)}.x_x"] = torch.stack(
                [tensors[f"{m.group(1)}.x_{s}"].reshape(-1) for s in "rwkvag"]).contiguous()
    write_weights(stacked, out)
    return out


_OLD_ATTENTION = {"r_proj.weight": "receptance.weight", "k_proj.weight": "key.weight",
                  "v_proj.weight": "value.weight", "o_proj.weight": "output.weight",
                  "g_norm.weight": "ln_x.weight", "g_norm.bias": "ln_x.bias"}
_OLD_LORA = {"lora.0.weight": "1", "lora.2.weight": "2", "lora.2.bias": "0"}


def respell_rwkv7_attention(fla_folder: str | Path, out_dir: str | Path) -> Path:
    """The older HF RWKV-7 spelling (RWKV-block `Rwkv7ForCausalLM`, in llama.cpp's tensor map): `model.pre_ln`,
    `model.layers.N.{ln1,ln2}`, `...attention.{x_r.., w0, w1, .., receptance, .., ln_x}` with LoRA matrices in
    BlinkDL orientation, `...feed_forward.*`, `model.ln_out`, `lm_head`; config.json with `head_size`,
    `layer_norm_epsilon` and `Rwkv7ForCausalLM`."""
    src, out = Path(fla_folder), Path(out_dir)
    _copy_without_weights(src, out)
    old: Tensors = {}
    for key, value in read_folder_tensors(src).items():
        if key == "model.layers.0.pre_norm.weight" or key == "model.layers.0.pre_norm.bias":
            old["model.pre_ln." + key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("model.norm."):
            old["model.ln_out." + key.rsplit(".", 1)[1]] = value
            continue
        m = re.match(r"model\.layers\.(\d+)\.(attn_norm|ffn_norm|attn|ffn)\.(.+)$", key)
        if not m:
            old[key] = value
            continue
        layer, part, rest = m.groups()
        prefix = f"model.layers.{layer}"
        if part in ("attn_norm", "ffn_norm"):
            old[f"{prefix}.{'ln1' if part == 'attn_norm' else 'ln2'}.{rest}"] = value
        elif part == "ffn":
            old[f"{prefix}.feed_forward.{rest}"] = value
        elif (lora := re.match(r"([wavg])_lora\.(lora\.\d\.(?:weight|bias))$", rest)):
            name = lora.group(1) + _OLD_LORA[lora.group(2)]
            old[f"{prefix}.attention.{name}"] = value if value.dim() == 1 else value.t().contiguous()
        else:
            old[f"{prefix}.attention.{_OLD_ATTENTION.get(rest, rest)}"] = value
    write_weights(old, out)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["Rwkv7ForCausalLM"]
    config["head_size"] = config.pop("head_dim")
    config["layer_norm_epsilon"] = config.pop("norm_eps")
    for ours, theirs in (("decay_low_rank_dim", "lora_rank_decay"), ("a_low_rank_dim", "lora_rank_iclr"),
                         ("v_low_rank_dim", "lora_rank_value_residual_mix"), ("gate_low_rank_dim", "lora_rank_gate")):
        config[theirs] = config.pop(ours)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
