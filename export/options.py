"""What `rwkv-deploy export` can be asked for, as plain data with no PyTorch import, so the command line
takes its choices and defaults from here and a runtime-only install can still show `--help`."""

from __future__ import annotations

from dataclasses import dataclass

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.names import PREFILL_LOGITS, PREFILL_LOGITS_LAST

PRECISIONS = ("fp32", "fp16", "int8", "int5", "int4")
# traced in fp32, then the ONNX file is quantized (export/quantize.py); int5 is mixed: 8-bit weights with a
# 4-bit FFN value projection, about 5.5 bits per weight
QUANTIZED_PRECISIONS = ("int8", "int5", "int4")
DEFAULT_OPSET = 18  # the opset the graphs are traced at (torch.onnx's dynamo exporter)
MIN_OPSET = 18  # torch.onnx's exporter (dynamo) writes opset 18 and later; the newest is the installed onnx's


class ExportError(RefusedError):
    """Export options that do not fit together or do not fit the checkpoint."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    external_data: bool | None = None  # None: only when the weights exceed 2 GB
    tokenizer: str | None = None  # "world", "bytes", "none", a tokenizer.json path, or None to infer
    force: bool = False
    name: str | None = None  # graph file stem; default: the checkpoint's stem
    prefill: bool = False  # also export the time-parallel prefill graph (weights shared with the step graph)
    prefill_logits: str = PREFILL_LOGITS_LAST  # prefill graph output: "last" position's logits, or "all" positions
    ln_x_eps: float | None = None  # v5+ ln_x GroupNorm epsilon; None: BlinkDL's 64e-5 (rwkv.cpp's v5 uses 1e-5)
    max_params: int | None = None  # plausibility cap on the checkpoint's parameters (None: limits.max_params())

    def __post_init__(self) -> None:
        """Options that can never export are refused here, before any file is opened."""
        if self.prefill_logits not in PREFILL_LOGITS:
            raise ExportError(f"unknown prefill logits {self.prefill_logits!r}; expected {' or '.join(PREFILL_LOGITS)}")
        if self.ln_x_eps is not None and not 0 < self.ln_x_eps < 1:
            raise ExportError(f"--ln-x-eps {self.ln_x_eps}: must be a small positive number (BlinkDL 64e-5, "
                              "rwkv.cpp 1e-5)")
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.opset < MIN_OPSET:
            raise ExportError(f"--opset {self.opset}: the exporter writes opsets {MIN_OPSET} and later")
