"""The sizes and settings that fully describe an RWKV model, whatever its version."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

VERSIONS: tuple[str, ...] = ("4", "5.0", "5.1", "5.2", "6", "7")


@dataclass(frozen=True)
class ModelConfig:
    """Everything a reference model needs besides its weights.

    `n_head`/`head_size` are None for RWKV-4, whose recurrence is per channel, not per head.
    `lora` holds the low-rank sizes read from the weights: v6 {"mix", "decay"}, v7 {"w", "a", "v", "g"}.
    `ln_x_eps` is the per-head GroupNorm epsilon of v5+: BlinkDL uses 64e-5; rwkv.cpp's v5 uses 1e-5.
    `has_ln0` is False only for Hugging Face RWKV-7 folders built without layer 0's `pre_norm` (fla's
    `norm_first: false`): the embedding then enters layer 0 un-normalised.
    """

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_size: int
    att_size: int
    n_head: int | None = None
    head_size: int | None = None
    lora: dict[str, int] = field(default_factory=dict)
    ln_eps: float = 1e-5
    ln_x_eps: float = 64e-5
    has_time_state: bool = False
    has_ln0: bool = True

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"unknown RWKV version {self.version!r}; expected one of {', '.join(VERSIONS)}")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
