"""Precision variants of a reference model, applied before tracing.

fp16: weights and matrix products in fp16; everything else (layer/group norms, exp/decay, the WKV state
update, the residual stream, logits) stays fp32, with explicit Cast nodes at each boundary, so the same
ONNX file is a valid strongly typed TensorRT network and runs on ONNX Runtime. Overflow safety: the
residual stream is fp32, and each fp16 matrix product gets a power-of-two input scale (exact in binary
floating point) chosen from activation ranges measured on calibration tokens, so neither its fp16 input
nor its fp16 output comes near 65504.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_deploy.models.reference.base import RWKVModel

from .options import PRECISIONS, QUANTIZED_PRECISIONS

FP16_INPUT_LIMIT = 2.0**12  # headroom x16 below fp16's max (65504) for inputs seen in calibration
FP16_OUTPUT_LIMIT = 2.0**13


class Fp16Linear(nn.Module):
    """y = (x / s) · Wᵀ in fp16, then × s in fp32; s is a power of two so the scaling is exact."""

    def __init__(self, weight: torch.Tensor, input_scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().to(torch.float16), requires_grad=False)
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = x * (1.0 / self.input_scale)
        y = F.linear(x.to(torch.float16), self.weight).to(torch.float32)
        return y * self.input_scale if self.input_scale != 1.0 else y


class Fp16Embedding(nn.Module):
    """Embedding table stored in fp16; the looked-up rows are cast to fp32."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().to(torch.float16), requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight).to(torch.float32)


def power_of_two_scale(max_in: float, max_out: float) -> float:
    need = max(max_in / FP16_INPUT_LIMIT, max_out / FP16_OUTPUT_LIMIT, 1.0)
    return float(2.0 ** math.ceil(math.log2(need)))


@torch.no_grad()
def measure_linear_ranges(model: RWKVModel, tokens: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Max |input| and |output| of every nn.Linear while running `tokens` [B, T] through the model."""
    ranges: dict[str, tuple[float, float]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def hook(mod, args, out, name=name):
                a, b = ranges.get(name, (0.0, 0.0))
                ranges[name] = (max(a, float(args[0].abs().max())), max(b, float(out.abs().max())))
            hooks.append(module.register_forward_hook(hook))
    try:
        model(tokens, model.init_state(tokens.shape[0]))
    finally:
        for h in hooks:
            h.remove()
    return ranges


def calibration_tokens(vocab_size: int, batch: int = 4, length: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def to_fp16(model: RWKVModel, calibration: torch.Tensor | None = None,
            calibration_model: RWKVModel | None = None) -> RWKVModel:
    """A copy of `model` with fp16 weights and matrix products, fp32 elsewhere (see module docstring).

    The activation ranges are measured on `calibration_model` when given: the same model computing with real
    weights while `model` is only its structure (the meta device, for export of models larger than memory)."""
    if calibration is None:
        calibration = calibration_tokens(model.config.vocab_size)
    ranges = measure_linear_ranges(calibration_model or model, calibration)
    fp16 = copy.deepcopy(model)
    for name, module in list(fp16.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Fp16Linear(child.weight, power_of_two_scale(*ranges[full])))
            elif isinstance(child, nn.Embedding):
                setattr(module, child_name, Fp16Embedding(child.weight))
    return fp16


def apply_precision(model: RWKVModel, precision: str, calibration_model: RWKVModel | None = None) -> RWKVModel:
    """`model` as traced at `precision` (int8/int4 are quantized from the fp32 graph afterwards);
    `calibration_model` as in `to_fp16`."""
    if precision == "fp32" or precision in QUANTIZED_PRECISIONS:
        return model
    if precision == "fp16":
        return to_fp16(model, calibration_model=calibration_model)
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")

