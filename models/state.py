"""What recurrent state a model carries between tokens: names, shapes, dtypes, initial values.

The spec is the contract between the reference model, the exported graph (one input and one output
per entry, in this order) and every runtime, which builds a fresh state from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from rwkv_deploy.package.names import BATCH_AXIS

BATCH = BATCH_AXIS  # the symbolic batch axis: the exported graphs and the manifest use the same name


@dataclass(frozen=True)
class StateTensorSpec:
    """One state tensor. `shape` starts with the symbolic batch axis ("batch").

    `init` is the fill value of a fresh state. `init_from_checkpoint` marks tensors whose fresh value is
    a tensor stored in the checkpoint (state-tuned models' `time_state`), not a constant fill.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    init: float = 0.0
    init_from_checkpoint: bool = False

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    @property
    def numel_per_sequence(self) -> int:
        n = 1
        for d in self.shape:
            if d != BATCH:
                n *= int(d)
        return n


@dataclass(frozen=True)
class StateSpec:
    """The ordered list of state tensors of a model."""

    tensors: tuple[StateTensorSpec, ...]

    def __iter__(self) -> Iterator[StateTensorSpec]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> StateTensorSpec:
        return self.tensors[i]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def bytes_per_sequence(self) -> int:
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}
        return sum(t.numel_per_sequence * itemsize[t.dtype] for t in self.tensors)

    def check(self, state: Sequence[torch.Tensor], batch: int) -> None:
        """Raise ValueError naming the first state tensor whose count, shape or dtype is wrong."""
        if len(state) != len(self.tensors):
            raise ValueError(f"state has {len(state)} tensors, expected {len(self.tensors)}")
        for spec, t in zip(self.tensors, state):
            want = spec.concrete_shape(batch)
            if tuple(t.shape) != want:
                raise ValueError(f"state tensor {spec.name} has shape {list(t.shape)}, expected {list(want)}")
            if t.dtype != getattr(torch, spec.dtype):
                raise ValueError(f"state tensor {spec.name} has dtype {t.dtype}, expected {spec.dtype}")
