"""Pass/fail limits per precision, and the checks that apply them to measured metrics.

fp32 exports compute what the reference computes in the same precision, so only kernel-order rounding
separates them: limits sit roughly 10x above what correct fp32 exports measure (see the numbers in each
class). fp16 exports round weights and matrix products to fp16 by design, so their limits are on what a
user would notice (distribution shift, changed argmax, greedy text diverging where the reference was sure)
while still far below what a wrong or overflowing graph produces. int8/int4 exports round weights to 8/4 bits,
so their limits are set from measured quantization error with headroom (see the classes). Any NaN or Inf fails
at every precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from rwkv_deploy.errors import RefusedError


@dataclass(frozen=True)
class Thresholds:
    precision: str
    logits_max_abs: float
    """max |logit_art - logit_ref| over every step, sequence and vocab entry."""
    state_max_rel: float
    """max |state_art - state_ref| / max(|state_ref|, 1) over every state tensor and step."""
    kl_mean: float
    """Mean over steps and sequences of KL(softmax(ref) || softmax(art)), nats."""
    kl_max: float
    """Worst single step and sequence of that KL."""
    top1_min: float
    """Fraction of (step, sequence) rows on which both sides rank the same token first."""
    growth_ratio_max: float
    """max logit error in the last quarter of steps / in the first quarter (errors floored, see below)."""

    @property
    def greedy_margin_max(self) -> float:
        """Greedy decodes may part only where the reference was nearly undecided: its preference for its own
        token over the artifact's at most twice the logit tolerance (errors within tolerance on both tokens
        can flip such a choice). Counting identical tokens alone would fail correct fp16 exports at near-ties."""
        return 2 * self.logits_max_abs

    @property
    def growth_floor(self) -> float:
        """Errors below 0.1% of the logit tolerance count as this floor, so noise far below it is not 'growth'."""
        return self.logits_max_abs * 1e-3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"greedy_margin_max": self.greedy_margin_max, "growth_floor": self.growth_floor}


@dataclass(frozen=True)
class Fp32Thresholds(Thresholds):
    """Correct fp32 exports (random RWKV v4/v5.2/v6/v7, 256 steps x 4) measure max |dlogit| <= 2.7e-6,
    state rel <= 1.2e-5, KL mean <= 7e-14 and max <= 3e-13, top-1 1.0, identical greedy text. A trained
    model has sharper, larger logits and its state keeps accumulating kernel-order rounding: the bundled
    model measures max |dlogit| 9.5e-5 and state rel 6.4e-5 over 256 steps x 4 x 2 streams. The limits are
    10x above that, and still 20x below the smallest error of an fp16 export, so a wrong graph fails."""

    precision: str = "fp32"
    logits_max_abs: float = 1e-3
    state_max_rel: float = 1e-3
    kl_mean: float = 1e-9
    kl_max: float = 1e-7
    top1_min: float = 0.99
    growth_ratio_max: float = 100.0


@dataclass(frozen=True)
class Fp16Thresholds(Thresholds):
    """Correct fp16 exports (same models) measure max |dlogit| <= 3.4e-3, state rel <= 0.043 (the WKV
    state, whose error builds up over its memory window, then levels off), KL mean <= 1e-7 and max <= 6e-7,
    top-1 >= 0.995, greedy text parting only where the reference's top-2 were within 1e-3. The limits
    leave room for real models, whose logits are larger and sharper than random ones."""

    precision: str = "fp16"
    logits_max_abs: float = 0.25
    state_max_rel: float = 0.2
    kl_mean: float = 1e-3
    kl_max: float = 5e-2
    top1_min: float = 0.98
    growth_ratio_max: float = 100.0


@dataclass(frozen=True)
class Int8Thresholds(Thresholds):
    """int8 exports quantize every matrix product's weights (and the embedding) to 8 bits, blocks of 128 along
    K with a scale and zero point each, and let ONNX Runtime quantize the activations to int8 inside MatMulNBits
    (accuracy_level 4): rounding by design, ~100x fp16's error. Measured with `rwkv-deploy validate` (256 steps
    x 4 sequences): the bundled model max |dlogit| 2.36 (random-token stream), state rel 1.75, KL mean 3.6e-3
    and max 0.55, top-1 0.960, growth 1.10, greedy text identical (blocks of 32 would halve that: 1.08, KL mean
    1.7e-3, max 0.094, but decode 1.4x slower); random v4/v5.2/v6/v7 models (2x64 vocab 256 and 4x256 vocab
    4096) at most 0.24, 0.60, 1.7e-4, 1.6e-3, top-1 >= 0.963, greedy parting at reference margins <= 0.05.
    The limits sit ~2.5-3x above the bundled model's (a trained model's logits are the larger and sharper
    ones) and far below a wrong graph's: the bundled int8 package with its zero points overwritten by the
    symmetric default (a plausible packing bug) measures max |dlogit| 22.5, KL mean 8.3, top-1 0.031."""

    precision: str = "int8"
    logits_max_abs: float = 6.0
    state_max_rel: float = 5.0
    kl_mean: float = 1e-2
    kl_max: float = 1.5
    top1_min: float = 0.9
    growth_ratio_max: float = 100.0


@dataclass(frozen=True)
class Int4Thresholds(Thresholds):
    """int4 exports store the matrix-product weights (head included) in 4 bits, blocks of 32 with a zero point
    each (the embedding stays 8-bit). That is a real loss on the 0.97M-parameter bundled model (width 128):
    max |dlogit| 5.96 (3.73 on text), state rel 4.13, KL mean 0.117 (0.066 on text) and max 2.18, top-1 0.739
    (0.836 on text), greedy text parting where the reference's top-2 were within 0.83. Random v4/v5.2/v6/v7
    models (same sizes as int8's): max |dlogit| <= 1.02, state rel <= 6.0, KL mean <= 0.012 and max <= 0.043,
    top-1 >= 0.695 (their logits are nearly flat, so near-ties flip), greedy margins <= 0.36. The limits
    are ~2.5x the worst measured value: they catch a broken graph (zero points overwritten as above: KL mean
    8.2, top-1 0.032), not the inherent loss of 4-bit weights; prefer int8 (or fp16) when that loss matters."""

    precision: str = "int4"
    logits_max_abs: float = 15.0
    state_max_rel: float = 20.0
    kl_mean: float = 0.3
    kl_max: float = 5.0
    top1_min: float = 0.6
    growth_ratio_max: float = 100.0


@dataclass(frozen=True)
class Int5Thresholds(Int4Thresholds):
    """int5 exports are int8 with the FFN value projection in 4 bits (export/quantize.py): their loss lies between
    int8's and int4's, so int4's limits apply (they catch a broken graph, not the rounding)."""

    precision: str = "int5"


THRESHOLDS: dict[str, Thresholds] = {"fp32": Fp32Thresholds(), "fp16": Fp16Thresholds(), "int8": Int8Thresholds(),
                                     "int5": Int5Thresholds(), "int4": Int4Thresholds()}


class UnknownPrecisionError(RefusedError):
    """A precision name with no fidelity thresholds."""


def thresholds_for(precision: str) -> Thresholds:
    try:
        return THRESHOLDS[precision]
    except KeyError:
        raise UnknownPrecisionError(f"no validation thresholds for precision {precision!r} "
                                    f"(known: {', '.join(THRESHOLDS)})") from None


@dataclass(frozen=True)
class Check:
    """One metric compared with its limit, for one stream (or 'greedy')."""

    metric: str
    scope: str
    value: float
    op: str  # "<=" or ">="
    limit: float
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.metric} [{self.scope}] = {self.value:.4g}, limit {self.op} {self.limit:.4g}{extra}"


# metric name -> (Thresholds field, or a fixed limit, and the direction that passes)
_LIMITS: dict[str, tuple[str | float, str]] = {
    "nonfinite_values": (0.0, "<="),
    "steps_out_of_tolerance": (0.0, "<="),
    "logits_max_abs": ("logits_max_abs", "<="),
    "state_max_rel": ("state_max_rel", "<="),
    "kl_mean": ("kl_mean", "<="),
    "kl_max": ("kl_max", "<="),
    "top1_agreement": ("top1_min", ">="),
    "growth_ratio": ("growth_ratio_max", "<="),
    "greedy_divergence_margin": ("greedy_margin_max", "<="),
}


def _passes(value: float, op: str, limit: float) -> bool:
    if math.isnan(value):
        return False
    return value <= limit if op == "<=" else value >= limit


def evaluate(scope: str, metrics: Mapping[str, float], thresholds: Thresholds,
             details: Mapping[str, str] | None = None) -> list[Check]:
    """A Check for every metric in `metrics` that has a limit; NaN never passes."""
    checks = []
    for metric, (limit_source, op) in _LIMITS.items():
        if metric not in metrics:
            continue
        limit = float(getattr(thresholds, limit_source) if isinstance(limit_source, str) else limit_source)
        value = float(metrics[metric])
        checks.append(Check(metric, scope, value, op, limit, _passes(value, op, limit),
                            (details or {}).get(metric, "")))
    return checks
