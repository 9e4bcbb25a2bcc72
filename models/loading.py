"""Checkpoint file -> canonical fp32 tensors -> configured reference model.

Pipeline: read (any format) -> BlinkDL key names -> detect version -> squeeze vectors -> sizes ->
version's load-time transforms -> check keys and shapes against the model -> load.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rwkv_deploy import limits
from rwkv_deploy.errors import CheckpointError

from .checkpoint.hf_folder import hf_folder_layout, to_blinkdl_names, weights_family
from .checkpoint.readers import read_tensors
from .config import ModelConfig
from .detect import detect_version
from .reference.base import RWKVModel
from .registry import model_class, version_module
from .sizes import common_sizes, squeeze_vectors

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@dataclass
class Checkpoint:
    """A checkpoint in canonical form: fp32 tensors named as the reference model's parameters."""

    path: Path
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    stored_dtype: str
    source_format: str

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def _dtype_summary(tensors: dict[str, torch.Tensor]) -> str:
    counts = Counter(_DTYPE_NAMES.get(t.dtype, str(t.dtype).replace("torch.", "")) for t in tensors.values())
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed (" + ", ".join(f"{name} {n}" for name, n in counts.most_common()) + ")"


def _stored_dtype(path: Path, raw: dict[str, torch.Tensor]) -> str:
    """How the file stores its weights: a GGUF file's own types (the tensors were dequantized on load)."""
    from .checkpoint.gguf import is_gguf_file, read_gguf_table, type_summary

    if is_gguf_file(path):
        return type_summary(read_gguf_table(path))
    return _dtype_summary(raw)


def _source_format(path: Path, raw: dict[str, torch.Tensor]) -> str:
    """The format of a single checkpoint file (folders are named by `hf_folder_layout`)."""
    if weights_family(raw):
        return "huggingface-weights"
    from .checkpoint.rwkvcpp import is_rwkvcpp_file

    if is_rwkvcpp_file(path):
        return "rwkv.cpp"
    from .checkpoint.gguf import is_gguf_file

    if is_gguf_file(path):
        return "gguf"
    return "safetensors" if path.suffix == ".safetensors" else "pytorch"


def _check_against_model(tensors: dict[str, torch.Tensor], config: ModelConfig, path: Path) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config.version)(config).state_dict().items()}
    name = f"RWKV-{config.version}"
    missing = [k for k in expected if k not in tensors]
    if missing:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        raise CheckpointError(path, f"incomplete {name} checkpoint: missing keys {shown}")
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:4]) + (f" (+{len(unexpected) - 4} more)" if len(unexpected) > 4 else "")
        raise CheckpointError(path, f"keys that {name} does not have: {shown}")
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            raise CheckpointError(
                path, f"{key} has shape {list(got)}, expected {list(shape)} (sizes read from layer 0 and emb.weight)")
    for key, t in tensors.items():
        # a sum is one vectorised pass without a temporary; only a non-finite sum needs the exact check
        if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
            raise CheckpointError(path, f"{key} contains NaN or infinite values")


def canonicalize(
    raw: dict[str, torch.Tensor], path: str | os.PathLike = "<state dict>", **overrides: Any
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Raw tensors (BlinkDL or HF names, any float dtype) -> (config, checked fp32 model tensors)."""
    path = Path(path)
    family = weights_family(raw)
    if family:
        raw = to_blinkdl_names(raw, family)
    version = detect_version(raw, path)
    non_float = [k for k, t in raw.items() if not t.is_floating_point()]
    if non_float:
        raise CheckpointError(path, f"{non_float[0]} has dtype {raw[non_float[0]].dtype}; weights must be floating point")
    tensors = {k: v.float() for k, v in squeeze_vectors(raw).items()}
    module = version_module(version)
    config = ModelConfig(version=version, **(vars(common_sizes(tensors, path)) | module.checkpoint_sizes(tensors, path) | overrides))
    tensors = module.prepare_checkpoint(tensors)
    _check_against_model(tensors, config, path)
    return config, tensors


def check_plausible(tensors: dict[str, torch.Tensor], path: Path, max_params: int | None = None) -> None:
    """Refuse declared sizes before anything is allocated from them: a tensor cannot hold more elements than
    the file stores for it (a stride-0 or overlapping view, e.g. a 1-element storage expanded to a billion
    rows, would make every later copy allocate that much), and the model must stay under the parameter cap."""
    cap = limits.max_params() if max_params is None else max_params
    total = 0
    for key, t in tensors.items():
        if t.device.type == "meta":
            raise CheckpointError(path, f"{key} holds no data (a meta tensor)")
        if t.numel() == 0:
            raise CheckpointError(path, f"{key} is empty (shape {list(t.shape)}); not a usable checkpoint")
        stored = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if t.numel() * t.element_size() > max(stored, 0):
            raise CheckpointError(path, f"{key} declares shape {list(t.shape)} ({t.numel():,} values) but the file "
                                        f"stores {max(stored, 0):,} bytes for it (an expanded or overlapping view); "
                                        "not a real checkpoint")
        total += t.numel()
    if total > cap:
        raise CheckpointError(path, f"declares {total:,} parameters, more than the plausibility cap of {cap:,}; for a "
                                    f"real model that large pass --max-params (or set {limits.MAX_PARAMS_ENV})")


def load_checkpoint(path: str | os.PathLike, max_params: int | None = None, **overrides: Any) -> Checkpoint:
    """Read and check a checkpoint; `overrides` set ModelConfig fields (e.g. ln_x_eps=1e-5); `max_params`
    raises the plausibility cap (`check_plausible`) for real giant models."""
    p = Path(path)
    raw = read_tensors(p)
    check_plausible(raw, p, max_params)
    if p.is_dir():  # a Hugging Face folder: its layout by key names, settings from its config.json
        layout = hf_folder_layout(p, raw)
        config, tensors = canonicalize(layout.tensors, p, **(layout.settings | overrides))
        return Checkpoint(p, config, tensors, _dtype_summary(raw), layout.format)
    config, tensors = canonicalize(raw, p, **overrides)
    return Checkpoint(p, config, tensors, _stored_dtype(p, raw), _source_format(p, raw))


def build_model(config: ModelConfig, tensors: dict[str, torch.Tensor], fold_ln0: bool = True) -> RWKVModel:
    """The reference model with these weights, in eval mode, ln0 folded into the embedding by default."""
    with torch.device("meta"):
        model = model_class(config.version)(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval().requires_grad_(False)
    if fold_ln0:
        model.emb.weight = torch.nn.Parameter(model.emb.weight.detach().clone(), requires_grad=False)
        model.fold_ln0()
    return model


def load_model(path: str | os.PathLike, fold_ln0: bool = True, max_params: int | None = None,
               **overrides: Any) -> RWKVModel:
    ckpt = load_checkpoint(path, max_params=max_params, **overrides)
    return build_model(ckpt.config, ckpt.tensors, fold_ln0=fold_ln0)
