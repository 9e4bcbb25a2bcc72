"""Checkpoint file -> canonical fp32 tensors -> configured reference model.

Pipeline: read (any format) -> BlinkDL key names -> detect version -> squeeze vectors -> sizes ->
version's load-time transforms -> check keys and shapes against the model -> load.

Every step before the last works on lazy tensors (`checkpoint/lazy.py`): `open_checkpoint` reads headers only
and returns a `LazyCheckpoint` whose tensors are read one at a time when loaded (export streams them into the
ONNX file; `inspect` checks them one by one), while `load_checkpoint` loads them all as fp32 for the reference
model.
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
from .checkpoint.lazy import LazyTensor, TensorLike, as_lazy
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


@dataclass
class LazyCheckpoint:
    """A checkpoint opened without reading its weights: config and canonical names now, each fp32 tensor read
    (and checked finite) when `load(key)` is called. `materialize()` reads all of them."""

    path: Path
    config: ModelConfig
    tensors: dict[str, LazyTensor]
    stored_dtype: str
    source_format: str

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def load(self, key: str) -> torch.Tensor:
        """The fp32 values of one canonical tensor; CheckpointError if they hold NaN or infinity."""
        return finite_weight(key, self.tensors[key].load(), self.path)

    def check_finite(self) -> None:
        """Read every tensor once, one at a time, and refuse NaN or infinity (bounded memory)."""
        for key in self.tensors:
            self.load(key)

    def materialize(self) -> Checkpoint:
        tensors = {key: self.load(key) for key in self.tensors}
        return Checkpoint(self.path, self.config, tensors, self.stored_dtype, self.source_format)


def finite_weight(key: str, tensor: torch.Tensor, path: Path) -> torch.Tensor:
    """`tensor` itself, or a CheckpointError naming `key` when it holds NaN or infinity."""
    # a sum is one vectorised pass without a temporary; only a non-finite sum needs the exact check
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise CheckpointError(path, f"{key} contains NaN or infinite values")
    return tensor


def _dtype_summary(tensors: dict[str, TensorLike]) -> str:
    counts = Counter(_DTYPE_NAMES.get(t.dtype, str(t.dtype).replace("torch.", "")) for t in tensors.values())
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed (" + ", ".join(f"{name} {n}" for name, n in counts.most_common()) + ")"


def _stored_dtype(path: Path, raw: dict[str, TensorLike]) -> str:
    """How the file stores its weights: a GGUF file's own types (the tensors were dequantized on load)."""
    from .checkpoint.gguf import is_gguf_file, read_gguf_table, type_summary

    if is_gguf_file(path):
        return type_summary(read_gguf_table(path))
    return _dtype_summary(raw)


def _source_format(path: Path, raw: dict[str, TensorLike]) -> str:
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


def _check_against_model(tensors: dict[str, LazyTensor], config: ModelConfig, path: Path) -> None:
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


def canonicalize(
    raw: dict[str, torch.Tensor], path: str | os.PathLike = "<state dict>", **overrides: Any
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Raw tensors (BlinkDL or HF names, any float dtype) -> (config, checked fp32 model tensors)."""
    config, tensors = canonicalize_lazy(as_lazy(raw), Path(path), **overrides)
    return config, {key: finite_weight(key, t.load(), Path(path)) for key, t in tensors.items()}


def canonicalize_lazy(
    raw: dict[str, LazyTensor], path: Path, **overrides: Any
) -> tuple[ModelConfig, dict[str, LazyTensor]]:
    """`canonicalize` on lazy tensors: names, config and shapes checked now; values converted when loaded."""
    family = weights_family(raw)
    if family:
        raw = to_blinkdl_names(raw, family)
    raw = as_lazy(raw)  # a map may add tensors made in memory (a fresh LayerNorm)
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


def check_plausible(tensors: dict[str, TensorLike], path: Path, max_params: int | None = None) -> None:
    """Refuse declared sizes before anything is allocated from them: no empty tensors, and the model must stay
    under the parameter cap. (Each reader has checked already that the file stores every tensor it declares.)"""
    cap = limits.max_params() if max_params is None else max_params
    total = 0
    for key, t in tensors.items():
        if t.numel() == 0:
            raise CheckpointError(path, f"{key} is empty (shape {list(t.shape)}); not a usable checkpoint")
        total += t.numel()
    if total > cap:
        raise CheckpointError(path, f"declares {total:,} parameters, more than the plausibility cap of {cap:,}; for a "
                                    f"real model that large pass --max-params (or set {limits.MAX_PARAMS_ENV})")


def open_checkpoint(path: str | os.PathLike, max_params: int | None = None, **overrides: Any) -> LazyCheckpoint:
    """Open and check a checkpoint without reading its weights; `overrides` set ModelConfig fields (e.g.
    ln_x_eps=1e-5); `max_params` raises the plausibility cap (`check_plausible`) for real giant models."""
    source = read_source(path, max_params)
    config, tensors = canonicalize_lazy(source.tensors, source.path, **(source.settings | overrides))
    return LazyCheckpoint(source.path, config, tensors, source.stored_dtype, source.format)


def load_checkpoint(path: str | os.PathLike, max_params: int | None = None, **overrides: Any) -> Checkpoint:
    """`open_checkpoint`, then every tensor read as fp32 and checked finite."""
    return open_checkpoint(path, max_params, **overrides).materialize()


@dataclass
class SourceTensors:
    """A checkpoint as read: lazy tensors under BlinkDL names in their stored dtypes and shapes (before any
    load-time transform), the ModelConfig settings its format fixes (HF config.json), and the format's name."""

    path: Path
    tensors: dict[str, LazyTensor]
    settings: dict[str, Any]
    format: str
    stored_dtype: str


def read_source(path: str | os.PathLike, max_params: int | None = None) -> SourceTensors:
    """Open any supported checkpoint (headers only) and name its tensors as BlinkDL does (what `convert` writes
    from and `open_checkpoint` canonicalizes)."""
    p = Path(path)
    raw = read_tensors(p)
    check_plausible(raw, p, max_params)
    if p.is_dir():  # a Hugging Face folder: its layout by key names, settings from its config.json
        layout = hf_folder_layout(p, raw)
        return SourceTensors(p, layout.tensors, layout.settings, layout.format, _dtype_summary(raw))
    family = weights_family(raw)
    tensors = to_blinkdl_names(raw, family) if family else raw
    return SourceTensors(p, tensors, {}, _source_format(p, raw), _stored_dtype(p, raw))


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
