"""What `rwkv-deploy inspect` reports about a checkpoint, as plain data."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from .config import ModelConfig
from .loading import open_checkpoint
from .state import StateSpec
from .registry import model_class


@dataclass(frozen=True)
class CheckpointSummary:
    path: str
    format: str
    version: str
    n_layer: int
    n_embd: int
    n_head: int | None
    head_size: int | None
    vocab_size: int
    ffn_size: int
    att_size: int
    lora: dict[str, int]
    parameters: int
    stored_dtype: str
    state_bytes_per_sequence: int
    state_tensors: int
    has_time_state: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _state_spec(cfg: ModelConfig) -> StateSpec:
    with torch.device("meta"):  # shapes only, no memory
        return model_class(cfg.version)(cfg).state_spec()


def summarize_checkpoint(path: str | os.PathLike, **overrides) -> CheckpointSummary:
    """Sizes from the headers; every tensor is then read once, one at a time, to refuse NaN or infinity, so a
    model larger than memory can be inspected."""
    ckpt = open_checkpoint(path, **overrides)
    ckpt.check_finite()
    cfg = ckpt.config
    spec = _state_spec(cfg)
    return CheckpointSummary(
        path=str(ckpt.path), format=ckpt.source_format, version=cfg.version, n_layer=cfg.n_layer,
        n_embd=cfg.n_embd, n_head=cfg.n_head, head_size=cfg.head_size, vocab_size=cfg.vocab_size,
        ffn_size=cfg.ffn_size, att_size=cfg.att_size, lora=dict(cfg.lora), parameters=ckpt.parameter_count,
        stored_dtype=ckpt.stored_dtype, state_bytes_per_sequence=spec.bytes_per_sequence(),
        state_tensors=len(spec), has_time_state=cfg.has_time_state,
    )


def format_summary(s: CheckpointSummary) -> str:
    heads = f"{s.n_head} x {s.head_size}" if s.n_head else "per-channel (no heads)"
    lora = ", ".join(f"{k} {v}" for k, v in s.lora.items()) or "-"
    rows = [
        ("checkpoint", s.path), ("format", s.format), ("RWKV version", s.version), ("layers", s.n_layer),
        ("embedding", s.n_embd), ("heads", heads), ("vocabulary", s.vocab_size), ("FFN size", s.ffn_size),
        ("LoRA ranks", lora), ("parameters", f"{s.parameters:,} ({s.parameters / 1e6:.2f} M)"),
        ("stored dtype", s.stored_dtype),
        ("state / sequence", f"{s.state_bytes_per_sequence:,} bytes in {s.state_tensors} tensors (fp32)"),
    ]
    if s.has_time_state:
        rows.append(("tuned state", "yes (time_state: fresh state starts from the checkpoint's)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
