"""The ratios issue 5's targets are stated in, computed from the rows of one run (pure functions).

Each target compares two rows measured in the same run on the same machine, so machine speed cancels.
The targets were set for RWKV-7 at the G1 0.1B shape on a 2-core machine; at other shapes they are
reported the same way but mean less."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engines import DEPLOY, RWKV_PACKAGE

DECODE_VS_RWKV_PACKAGE = {"fp32": 1.7, "int8": 3.0, "int4": 4.0}
BATCH16_VS_BATCH1 = 8.0
PREFILL64_VS_DECODE = 10.0
PREFILL64_VS_RWKV_PACKAGE = 2.0
LONG_CONTEXT_SLOWDOWN = 1.10
BANDWIDTH_FRACTION = 0.8


@dataclass(frozen=True)
class Ratio:
    name: str
    precision: str
    value: float
    target: float | None  # None: reported, no target
    higher_is_better: bool
    meaning: str

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def find(rows: list[dict[str, Any]], engine: str, mode: str, batch: int, tokens: int,
         precision: str | None = None) -> dict[str, Any] | None:
    for row in rows:
        if (row["engine"], row["mode"], row["batch"], row["tokens"]) == (engine, mode, batch, tokens) and \
                (precision is None or row["precision"] == precision):
            return row
    return None


def compute_ratios(rows: list[dict[str, Any]], decode_weight_bytes: dict[str, int], bandwidth: float,
                   longest_context: int, shortest_context: int) -> list[Ratio]:
    ratios: list[Ratio] = []
    precisions = list(dict.fromkeys(r["precision"] for r in rows if r["engine"] == DEPLOY))
    package_decode = find(rows, RWKV_PACKAGE, "decode", 1, 0)
    package_prefill = find(rows, RWKV_PACKAGE, "prefill", 1, 64)

    def add(name: str, precision: str, num: dict | None, den: dict | None, target: float | None, meaning: str,
            higher: bool = True, invert: bool = False) -> None:
        if num is None or den is None:
            return
        value = den["tokens_per_s"] / num["tokens_per_s"] if invert else num["tokens_per_s"] / den["tokens_per_s"]
        ratios.append(Ratio(name, precision, value, target, higher, meaning))

    for p in precisions:
        decode1 = find(rows, DEPLOY, "decode", 1, 0, p)
        add("decode_b1_vs_rwkv_package", p, decode1, package_decode, DECODE_VS_RWKV_PACKAGE.get(p),
            "decode tokens/s at batch 1, over the rwkv package's (cpu fp32)")
        add("decode_b16_vs_b1", p, find(rows, DEPLOY, "decode", 16, 0, p), decode1, BATCH16_VS_BATCH1,
            "decode tokens/s at batch 16 over batch 1")
        prefill64 = find(rows, DEPLOY, "prefill", 1, 64, p)
        add("prefill64_vs_decode", p, prefill64, decode1, PREFILL64_VS_DECODE,
            "prefill tokens/s at T=64 over step-by-step decode tokens/s (batch 1)")
        add("prefill64_vs_rwkv_package_prefill", p, prefill64, package_prefill, PREFILL64_VS_RWKV_PACKAGE,
            "prefill tokens/s at T=64 over the rwkv package's own prefill at T=64")
        if longest_context and shortest_context and longest_context != shortest_context:
            add(f"context{longest_context}_vs_{shortest_context}_cost", p,
                find(rows, DEPLOY, "decode", 1, longest_context, p), find(rows, DEPLOY, "decode", 1, shortest_context, p),
                LONG_CONTEXT_SLOWDOWN, f"per-token decode time at context {longest_context} over {shortest_context}",
                higher=False, invert=True)
        if decode1 is not None and p in decode_weight_bytes and bandwidth > 0:
            achieved = decode_weight_bytes[p] * decode1["tokens_per_s"]
            ratios.append(Ratio("decode_b1_weight_bandwidth", p, achieved / bandwidth, BANDWIDTH_FRACTION, True,
                                f"weight bytes read per second at decode batch 1 ({decode_weight_bytes[p] / 2**20:.0f} MiB "
                                f"per token) over the measured memory read bandwidth"))
    torch_decode = find(rows, "torch-reference", "decode", 1, 0)
    for p in precisions:
        add("decode_b1_vs_torch_reference", p, find(rows, DEPLOY, "decode", 1, 0, p), torch_decode, None,
            "decode tokens/s at batch 1 over the PyTorch reference's (fp32)")
    return ratios
