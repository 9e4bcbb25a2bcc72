"""Model shapes for benchmarking with random weights: `--shape VERSION:LAYERS:WIDTH:VOCAB[:HEAD_SIZE]`."""

from __future__ import annotations

import os

from dataclasses import dataclass
from pathlib import Path

from rwkv_deploy import limits
from rwkv_deploy.errors import RefusedError

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7")


class ShapeError(RefusedError, ValueError):
    """A --shape that is not version:layers:width:vocab[:heads] in range."""


@dataclass(frozen=True)
class ModelShape:
    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    head_size: int = 64

    @property
    def parameters(self) -> int:
        """About how many parameters a checkpoint of this shape has (embedding, head, 12 C^2 per layer)."""
        return 2 * self.vocab_size * self.n_embd + 12 * self.n_layer * self.n_embd ** 2

    @property
    def label(self) -> str:
        return f"{self.version}:{self.n_layer}:{self.n_embd}:{self.vocab_size}:{self.head_size}"

    def write_random_checkpoint(self, path: Path, seed: int = 0) -> Path:
        """A BlinkDL-format checkpoint of this shape with random (well-scaled) weights; ShapeError (one line)
        when its fp32 weights would not fit this machine's memory, before anything is allocated."""
        from rwkv_deploy.models.random_checkpoint import make_checkpoint, save_checkpoint

        need, have = 4 * self.parameters, physical_memory()
        if have and need > have:
            raise ShapeError(f"--shape {self.label}: its random fp32 weights need about {need / 2**30:.0f} GiB, "
                             f"more than this machine's {have / 2**30:.0f} GiB of memory")
        sd = make_checkpoint(self.version, n_layer=self.n_layer, n_embd=self.n_embd, head_size=self.head_size,
                             vocab_size=self.vocab_size, seed=seed)
        return save_checkpoint(sd, path)


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def parse_shape(text: str) -> ModelShape:
    """"7:12:768:65536" is RWKV-7 with 12 layers, width 768, vocabulary 65536 (head size 64 by default)."""
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise ShapeError(f"--shape {text!r}: expected VERSION:LAYERS:WIDTH:VOCAB[:HEAD_SIZE], e.g. 7:12:768:65536")
    version = parts[0] if parts[0] != "5" else "5.2"
    if version not in VERSIONS:
        raise ShapeError(f"--shape {text!r}: unknown RWKV version {parts[0]!r} (one of {', '.join(VERSIONS)})")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise ShapeError(f"--shape {text!r}: layers, width, vocab and head size must be integers") from None
    if min(numbers) < 1:
        raise ShapeError(f"--shape {text!r}: every size must be at least 1")
    shape = ModelShape(version, *numbers)
    for value, cap, what in ((shape.n_layer, limits.MAX_LAYERS, "layers"), (shape.n_embd, limits.MAX_WIDTH, "width"),
                             (shape.vocab_size, limits.MAX_VOCAB, "vocab")):
        if value > cap:
            raise ShapeError(f"--shape {text!r}: {what} {value} is more than {cap}")
    if shape.parameters > limits.max_params():
        raise ShapeError(f"--shape {text!r}: about {shape.parameters:,} parameters, more than the plausibility cap of "
                         f"{limits.max_params():,}; pass --max-params to measure a model that large")
    if version != "4" and shape.n_embd % shape.head_size:
        raise ShapeError(f"--shape {text!r}: width {shape.n_embd} is not a multiple of head size {shape.head_size}")
    return shape
