"""Random-weight RWKV checkpoints in BlinkDL `.pth` format (v4, v5.0, v5.1, v5.2, v6, v7): for tests and
for `rwkv-deploy bench --shape` (a released model's sizes without its weights).

The state dicts use the key names, shapes and key order of released BlinkDL files (the order of
the training modules' parameters, RWKV-LM's `RWKV-v7/train_temp/src/model.py` for v7: its layer 0 carries
`att.v0/v1/v2` too, unused, as released G1 files do; its LoRA ranks follow from the width, `v7_lora_ranks`). The `rwkv` package's version detection depends on that order
(see `make_checkpoint`). Values are drawn so that the model is numerically meaningful rather than
noise that saturates. Decays span fast and slow memory, mix coefficients lie in (0, 1), LayerNorms
are close to identity, and residual-branch projections are scaled GPT-2 style (1/sqrt(2L)) so the
residual stream stays O(1). Every tensor comes from one seeded `torch.Generator` in key order, so a
seed fully determines the checkpoint and every layer gets its own values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

VERSIONS: tuple[str, ...] = ("4", "5.0", "5.1", "5.2", "6", "7")
DEFAULT_LORA: dict[str, dict[str, int]] = {  # v7's defaults depend on the width: see v7_lora_ranks
    "6": {"mix": 32, "decay": 64},
    "7": {"w": 32, "a": 32, "v": 32, "g": 32},
}


def v7_lora_ranks(n_embd: int) -> dict[str, int]:
    """The LoRA ranks RWKV-7's training code picks for width C (rounded to multiples of 32, at least 32):
    w and a 2.5*sqrt(C), v 1.7*sqrt(C), g 5*sqrt(C); at the G1 0.1B width 768 that is 64/64/32/128."""
    def rank(factor: float) -> int:
        return max(32, int(round(factor * math.sqrt(n_embd) / 32)) * 32)
    return {"w": rank(2.5), "a": rank(2.5), "v": rank(1.7), "g": rank(5.0)}

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Spec:
    """Resolved dimensions of one random checkpoint."""

    version: str
    n_layer: int
    n_embd: int
    head_size: int
    vocab_size: int
    ffn_size: int
    lora: dict[str, int]
    time_state: bool

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def residual_gain(self) -> float:
        """GPT-2 style 1/sqrt(2L): keeps the residual stream O(1) whatever the depth."""
        return 1.0 / math.sqrt(2 * self.n_layer)


class Rng:
    """One seeded generator; every draw is deterministic and happens in key order."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * std + mean

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen) * (high - low) + low

    def linear(self, n_out: int, n_in: int, gain: float = 1.0) -> torch.Tensor:
        """torch-style [out, in] weight with std gain/sqrt(in): unit-variance outputs for unit inputs."""
        return self.normal((n_out, n_in), gain / math.sqrt(n_in))

    def lora(self, n_in: int, n_out: int, gain: float = 1.0) -> torch.Tensor:
        """BlinkDL low-rank matrix, stored [in, out] (applied as x @ A)."""
        return self.normal((n_in, n_out), gain / math.sqrt(n_in))

    def mix(self, c: int) -> torch.Tensor:
        """Token-shift coefficient [1,1,C] inside (0, 1), so both tokens contribute."""
        return self.uniform((1, 1, c), 0.05, 0.95)

    def layer_norm(self, c: int) -> Tensors:
        """Near-identity affine: weight 1 +- 0.1, small bias."""
        return {"weight": self.normal((c,), 0.1, 1.0), "bias": self.normal((c,), 0.02)}

    def loglog_decay(self, shape: tuple[int, ...], slowest: float, fastest: float) -> torch.Tensor:
        """w such that exp(-exp(w)) is spread over (fastest, slowest). Stratified (one value per
        equal slice of log-log space, shuffled) so that even 2 heads get one fast and one slow decay."""
        low, high = math.log(-math.log(slowest)), math.log(-math.log(fastest))
        count = math.prod(shape)
        strata = (torch.randperm(count, generator=self.gen) + torch.rand(count, generator=self.gen)) / count
        return (low + (high - low) * strata).reshape(shape)


def make_checkpoint(
    version: str,
    *,
    n_layer: int,
    n_embd: int,
    head_size: int = 64,
    vocab_size: int,
    ffn_size: int | None = None,
    lora: dict[str, int] | None = None,
    seed: int = 0,
    time_state: bool = False,
) -> Tensors:
    """Random float32 BlinkDL state dict for `version` (one of VERSIONS).

    `head_size` is ignored for v4. `lora` overrides some of the default ranks (v6 keys
    "mix"/"decay", v7 keys "w"/"a"/"v"/"g"). `time_state` adds v5/v6 `att.time_state` [H,N,N]
    (stored [H, value, key], as state-tuned files) drawn after all other tensors, so the other
    tensors equal those of the same call without `time_state`.
    Note: the `rwkv` package detects v5.x from the key order and needs n_layer >= 2 for v5.x.
    """
    spec = _resolve_spec(version, n_layer, n_embd, head_size, vocab_size, ffn_size, lora, time_state)
    rng = Rng(seed)
    sd: Tensors = dict(_tensors_in_order(rng, spec))
    return _with_time_state(rng, spec, sd) if spec.time_state else sd


def _tensors_in_order(rng: Rng, spec: Spec) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors in key order, one block at a time (a model larger than memory never is whole)."""
    c = spec.n_embd
    yield "emb.weight", rng.normal((spec.vocab_size, c), 1.0)
    for i in range(spec.n_layer):
        yield from _block(rng, spec, i).items()
    yield from _prefixed("ln_out.", rng.layer_norm(c)).items()
    yield "head.weight", rng.linear(spec.vocab_size, c)


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
HEADER_RESERVE = 1 << 20  # bytes kept for the safetensors header, written last (padded with spaces)


def write_safetensors_checkpoint(path: str | Path, version: str, *, n_layer: int, n_embd: int, head_size: int = 64,
                                 vocab_size: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                                 ffn_size: int | None = None, lora: dict[str, int] | None = None) -> Path:
    """`make_checkpoint`'s tensors (same seed, same values before rounding to `dtype`) written to a safetensors
    file one block at a time: a 7B model is written in the memory of one layer. The header (offsets of what
    was written) goes last, into space reserved at the start."""
    spec = _resolve_spec(version, n_layer, n_embd, head_size, vocab_size, ffn_size, lora, False)
    path = Path(path)
    header: dict[str, dict] = {}
    offset = 0
    with open(path, "wb") as f:
        f.seek(8 + HEADER_RESERVE)
        for key, tensor in _tensors_in_order(Rng(seed), spec):
            data = tensor.to(dtype).contiguous().view(torch.uint8).numpy().tobytes()
            header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(tensor.shape),
                           "data_offsets": [offset, offset + len(data)]}
            f.write(data)
            offset += len(data)
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > HEADER_RESERVE:
            raise ValueError(f"safetensors header of {len(text)} bytes does not fit the {HEADER_RESERVE} reserved")
        f.seek(0)
        f.write(HEADER_RESERVE.to_bytes(8, "little") + text + b" " * (HEADER_RESERVE - len(text)))
    return path


def save_checkpoint(sd: Tensors, path: str | Path) -> Path:
    """torch.save the state dict (BlinkDL files are plain pickled dicts of tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def default_ffn_size(version: str, n_embd: int) -> int:
    """4C for v4/v7; floor(3.5C/32)*32 for v5/v6 (RWKV-LM training default)."""
    if version in ("4", "7"):
        return 4 * n_embd
    return int(3.5 * n_embd) // 32 * 32


def _resolve_spec(
    version: str,
    n_layer: int,
    n_embd: int,
    head_size: int,
    vocab_size: int,
    ffn_size: int | None,
    lora: dict[str, int] | None,
    time_state: bool,
) -> Spec:
    """Validate arguments early so a bad request fails here, not deep inside a test."""
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {VERSIONS}")
    if min(n_layer, n_embd, vocab_size, head_size) < 1:
        raise ValueError("n_layer, n_embd, vocab_size and head_size must be positive")
    if version != "4" and n_embd % head_size:
        raise ValueError(f"n_embd={n_embd} is not a multiple of head_size={head_size}")
    if time_state and not version.startswith(("5", "6")):
        raise ValueError("time_state exists only for v5.x/v6 checkpoints")
    defaults = DEFAULT_LORA.get(version, {})
    unknown = set(lora or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown LoRA names {sorted(unknown)} for v{version}; known: {sorted(defaults)}")
    ffn = ffn_size if ffn_size is not None else default_ffn_size(version, n_embd)
    if version == "7":
        defaults = v7_lora_ranks(n_embd)
    return Spec(version, n_layer, n_embd, head_size, vocab_size, ffn, {**defaults, **(lora or {})}, time_state)


def _with_time_state(rng: Rng, spec: Spec, sd: Tensors) -> Tensors:
    """Insert small random `att.time_state` after each layer's `att.ln_x.bias`."""
    h, n = spec.n_head, spec.head_size
    states = {i: rng.normal((h, n, n), 0.1) for i in range(spec.n_layer)}
    out: Tensors = {}
    for key, value in sd.items():
        out[key] = value
        layer, _, rest = key.removeprefix("blocks.").partition(".")
        if key.startswith("blocks.") and rest == "att.ln_x.bias":
            out[f"blocks.{layer}.att.time_state"] = states[int(layer)]
    return out


def _prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


def _block(rng: Rng, spec: Spec, i: int) -> Tensors:
    """One block in training-module order: ln1, ln2, (ln0 for block 0), att.*, ffn.*."""
    c = spec.n_embd
    out = _prefixed("ln1.", rng.layer_norm(c))
    out.update(_prefixed("ln2.", rng.layer_norm(c)))
    if i == 0:
        out.update(_prefixed("ln0.", rng.layer_norm(c)))
    out.update(_prefixed("att.", _ATTENTION[spec.version](rng, spec, i)))
    out.update(_prefixed("ffn.", _FFN[spec.version](rng, spec)))
    return _prefixed(f"blocks.{i}.", out)


def _depth_ratio(spec: Spec, i: int) -> float:
    return i / (spec.n_layer - 1) if spec.n_layer > 1 else 0.0


def _att_v4(rng: Rng, spec: Spec, i: int) -> Tensors:
    """v4: per-channel decay w with -exp(w) from about -0.007 (slow) to -20 (instant)."""
    c = spec.n_embd
    ramp = torch.linspace(0.0, 1.0, c) ** (0.7 + 1.3 * _depth_ratio(spec, i))
    return {
        "time_decay": -5.0 + 8.0 * ramp + rng.normal((c,), 0.3),
        "time_first": rng.uniform((c,), math.log(0.3) - 0.5, math.log(0.3) + 0.5),
        "time_mix_k": rng.mix(c),
        "time_mix_v": rng.mix(c),
        "time_mix_r": rng.mix(c),
        "key.weight": rng.linear(c, c),
        "value.weight": rng.linear(c, c),
        "receptance.weight": rng.linear(c, c),
        "output.weight": rng.linear(c, c, spec.residual_gain),
    }


def _att_v5(rng: Rng, spec: Spec, i: int) -> Tensors:
    """v5.x: exp(-exp(time_decay)) in (0.3, 0.999); 5.0/5.1 per head with `time_first` (exp'd by
    loaders), 5.2 per channel [H,N] with raw `time_faaaa`; 5.1/5.2 add the gate."""
    c, h, n = spec.n_embd, spec.n_head, spec.head_size
    gated = spec.version != "5.0"
    out: Tensors = {"time_mix_k": rng.mix(c), "time_mix_v": rng.mix(c), "time_mix_r": rng.mix(c)}
    if gated:
        out["time_mix_g"] = rng.mix(c)
    if spec.version == "5.2":
        out["time_decay"] = rng.loglog_decay((h, n), slowest=0.998, fastest=0.31)
        out["time_faaaa"] = rng.uniform((h, n), -0.2, 1.0)
    else:
        out["time_decay"] = rng.loglog_decay((h,), slowest=0.998, fastest=0.31)
        out["time_first"] = rng.uniform((h,), -1.5, 0.0)
    out.update(_projections(rng, spec, gated))
    out.update(_prefixed("ln_x.", rng.layer_norm(c)))
    return out


def _att_v6(rng: Rng, spec: Spec, i: int) -> Tensors:
    """v6: maa token shift plus LoRA deltas of about +-0.1; decays from (0.35, 0.997) +- LoRA."""
    c, h, n = spec.n_embd, spec.n_head, spec.head_size
    d_mix, d_decay = spec.lora["mix"], spec.lora["decay"]
    out: Tensors = {f"time_maa_{s}": rng.mix(c) for s in ("x", "w", "k", "v", "r", "g")}
    out["time_maa_w1"] = rng.lora(c, 5 * d_mix)
    out["time_maa_w2"] = rng.normal((5, d_mix, c), 0.2 / math.sqrt(d_mix))
    out["time_decay"] = rng.loglog_decay((1, 1, c), slowest=0.997, fastest=0.35)
    out["time_decay_w1"] = rng.lora(c, d_decay)
    out["time_decay_w2"] = rng.normal((d_decay, c), 0.2 / math.sqrt(d_decay))
    out["time_faaaa"] = rng.uniform((h, n), -0.2, 1.0)
    out.update(_projections(rng, spec, gated=True))
    out.update(_prefixed("ln_x.", rng.layer_norm(c)))
    return out


def _att_v7(rng: Rng, spec: Spec, i: int) -> Tensors:
    """v7, in the training module's parameter order: w0 in (-4, 2) gives decays exp(-0.6065*sigmoid(w0))
    in about (0.59, 0.99); LoRA outputs vary the pre-activations by about +-0.3. Layer 0 carries v0/v1/v2
    like released files (the training module creates them in every layer; no layer-0 code reads them)."""
    c, h, n, r = spec.n_embd, spec.n_head, spec.head_size, spec.lora
    out: Tensors = {f"x_{s}": rng.mix(c) for s in ("r", "w", "k", "v", "a", "g")}
    out["w1"], out["w2"] = rng.lora(c, r["w"]), rng.lora(r["w"], c, 0.5)
    out["w0"] = rng.uniform((1, 1, c), -4.0, 2.0)
    out["a1"], out["a2"] = rng.lora(c, r["a"]), rng.lora(r["a"], c, 0.5)
    out["a0"] = rng.uniform((1, 1, c), -1.0, 1.0)
    out["v1"], out["v2"] = rng.lora(c, r["v"]), rng.lora(r["v"], c, 0.5)
    out["v0"] = rng.uniform((1, 1, c), -1.0, 1.0)
    out["g1"], out["g2"] = rng.lora(c, r["g"]), rng.lora(r["g"], c, 1.5)
    out["k_k"] = rng.uniform((1, 1, c), 0.6, 1.1)
    out["k_a"] = rng.uniform((1, 1, c), 0.5, 1.2)
    out["r_k"] = rng.normal((h, n), 0.15)
    for name in ("receptance", "key", "value"):
        out[f"{name}.weight"] = rng.linear(c, c)
    out["output.weight"] = rng.linear(c, c, spec.residual_gain)
    out.update(_prefixed("ln_x.", rng.layer_norm(c)))
    return out


def _projections(rng: Rng, spec: Spec, gated: bool) -> Tensors:
    """v5/v6 r, k, v, output (and gate) projections in training-module order."""
    c = spec.n_embd
    out = {f"{name}.weight": rng.linear(c, c) for name in ("receptance", "key", "value")}
    out["output.weight"] = rng.linear(c, c, spec.residual_gain)
    if gated:
        out["gate.weight"] = rng.linear(c, c)
    return out


def _ffn_mix(rng: Rng, spec: Spec) -> Tensors:
    """v4/v5 channel mix: `time_mix_*` lerp, sigmoid receptance gate."""
    return {"time_mix_k": rng.mix(spec.n_embd), "time_mix_r": rng.mix(spec.n_embd), **_ffn_weights(rng, spec)}


def _ffn_maa(rng: Rng, spec: Spec) -> Tensors:
    """v6 channel mix: same weights, `time_maa_*` (1 - mix) names."""
    return {"time_maa_k": rng.mix(spec.n_embd), "time_maa_r": rng.mix(spec.n_embd), **_ffn_weights(rng, spec)}


def _ffn_weights(rng: Rng, spec: Spec) -> Tensors:
    c, f = spec.n_embd, spec.ffn_size
    return {
        "key.weight": rng.linear(f, c),
        "receptance.weight": rng.linear(c, c),
        "value.weight": rng.linear(c, f, spec.residual_gain),
    }


def _ffn_v7(rng: Rng, spec: Spec) -> Tensors:
    """v7 channel mix: no receptance."""
    c, f = spec.n_embd, spec.ffn_size
    return {
        "x_k": rng.mix(c),
        "key.weight": rng.linear(f, c),
        "value.weight": rng.linear(c, f, spec.residual_gain),
    }


_ATTENTION: dict[str, Callable[[Rng, Spec, int], Tensors]] = {
    "4": _att_v4, "5.0": _att_v5, "5.1": _att_v5, "5.2": _att_v5, "6": _att_v6, "7": _att_v7,
}
_FFN: dict[str, Callable[[Rng, Spec], Tensors]] = {
    "4": _ffn_mix, "5.0": _ffn_mix, "5.1": _ffn_mix, "5.2": _ffn_mix, "6": _ffn_maa, "7": _ffn_v7,
}
