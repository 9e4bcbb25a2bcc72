"""Reference models whose weights stay on disk: for exporting and calibrating models larger than memory.

Three views of one `LazyCheckpoint`:
- `graph_weights`: the tensors an exported graph stores, by parameter name, still lazy (ln0 folded into the
  embedding, as `build_model` does), for export to stream into the ONNX file one at a time;
- `meta_model`: the model's structure with no weights at all (the meta device), which is what tracing needs;
- `streamed_model`: a model that computes for real while holding only its small parameters (norms, mixes,
  decays, LoRAs, tuned states) in memory; each matrix (`nn.Linear`, `nn.Embedding`) is read just before its
  module runs and dropped right after. fp16 calibration and the initial state come from it.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint.lazy import LazyTensor, combine
from .config import ModelConfig
from .loading import LazyCheckpoint
from .reference import ops
from .reference.base import RWKVModel
from .registry import model_class

LN0 = ("blocks.0.ln0.weight", "blocks.0.ln0.bias")
STREAMED_MODULES = (nn.Linear, nn.Embedding)  # the modules whose weights are the model's bulk


def graph_weights(ckpt: LazyCheckpoint) -> dict[str, LazyTensor]:
    """Parameter name -> lazy fp32 tensor (checked finite when read) of the model `meta_model` builds: ln0 folded."""
    weights = {key: LazyTensor(t.shape, t.dtype, lambda key=key: ckpt.load(key)) for key, t in ckpt.tensors.items()}
    if LN0[0] in weights:
        emb, weight, bias = weights.pop("emb.weight"), weights.pop(LN0[0]), weights.pop(LN0[1])
        eps = ckpt.config.ln_eps
        weights["emb.weight"] = combine(lambda e, w, b: ops.layer_norm(e, w, b, eps), emb, weight, bias)
    return weights


def meta_model(config: ModelConfig) -> RWKVModel:
    """The reference model's structure on the meta device (no memory), in eval mode, ln0 folded like `graph_weights`."""
    with torch.device("meta"):
        model = model_class(config.version)(config)
    model.eval().requires_grad_(False)
    model.fold_ln0()
    return model


def _streamed_parameters(model: nn.Module) -> set[str]:
    return {f"{name}.{p}" if name else p for name, module in model.named_modules()
            if isinstance(module, STREAMED_MODULES) for p, _ in module.named_parameters(recurse=False)}


def streamed_model(config: ModelConfig, weights: dict[str, LazyTensor]) -> RWKVModel:
    """A model holding its small parameters and reading each `nn.Linear` / `nn.Embedding` weight from `weights`
    for the duration of its forward call only (forward hooks): memory stays at one matrix at a time."""
    model = meta_model(config)
    streamed = _streamed_parameters(model)
    model.load_state_dict({k: t.load() for k, t in weights.items() if k not in streamed}, strict=False, assign=True)
    for name, module in model.named_modules():
        if isinstance(module, STREAMED_MODULES):
            module.register_forward_pre_hook(_load_weight(weights[f"{name}.weight"]))
            module.register_forward_hook(_drop_weight)
    return model


def _load_weight(weight: LazyTensor):
    def hook(module: nn.Module, args: tuple) -> None:
        module.weight = nn.Parameter(weight.load(), requires_grad=False)
    return hook


def _drop_weight(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    module.weight = nn.Parameter(torch.empty(module.weight.shape, dtype=module.weight.dtype, device="meta"),
                                 requires_grad=False)
