"""Tensors known by shape and dtype whose values are read from the checkpoint only when needed.

A model of billions of parameters does not fit in memory twice (a 7B model is 28 GB in fp32), so the loader
never reads a whole checkpoint: readers give one `LazyTensor` per stored tensor (its shape and dtype from the
file's header, a function that reads its bytes), key maps and load-time transforms derive new lazy tensors
from them, and export reads each weight once, writes it to the ONNX external data and drops it.

The derived forms (`reshape`, `transpose`, `t`, `[i]`, `float`, `to`, `* scalar`, `apply`) compute
their result shape by running the same operation on an empty "meta" tensor, so a shape error surfaces when
the map is built, not when a weight is finally read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch

Loader = Callable[[], torch.Tensor]


class LazyTensor:
    """A tensor's shape and dtype, and `load()` that reads its values (a fresh tensor each call: drop it after use)."""

    __slots__ = ("shape", "dtype", "_load")

    def __init__(self, shape: Iterable[int], dtype: torch.dtype, load: Loader) -> None:
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._load = load

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "LazyTensor":
        """A tensor already in memory (or memory-mapped), seen through the lazy interface."""
        return cls(tensor.shape, tensor.dtype, lambda: tensor)

    def load(self) -> torch.Tensor:
        return self._load()

    # -- what the loader reads without loading ---------------------------------------------------------------
    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    # -- derived tensors, still lazy -----------------------------------------------------------------------
    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "LazyTensor":
        """`fn` applied when the values are read; its result's shape and dtype are found on a meta tensor now."""
        probe = fn(torch.empty(self.shape, dtype=self.dtype, device="meta"))
        source = self._load
        return LazyTensor(probe.shape, probe.dtype, lambda: fn(source()))

    def reshape(self, *shape: Any) -> "LazyTensor":
        return self.apply(lambda t: t.reshape(*shape))

    def transpose(self, dim0: int, dim1: int) -> "LazyTensor":
        return self.apply(lambda t: t.transpose(dim0, dim1).contiguous())

    def t(self) -> "LazyTensor":
        return self.transpose(0, 1)

    def __getitem__(self, index: int) -> "LazyTensor":
        return self.apply(lambda t: t[index].clone())  # a copy: a view would keep the whole source alive

    def float(self) -> "LazyTensor":
        return self if self.dtype == torch.float32 else self.to(torch.float32)

    def to(self, dtype: torch.dtype) -> "LazyTensor":
        return self.apply(lambda t: t.to(dtype))

    def __mul__(self, factor: float) -> "LazyTensor":
        return self.apply(lambda t: t * factor)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={list(self.shape)}, dtype={self.dtype})"


def combine(fn: Callable[..., torch.Tensor], *inputs: LazyTensor) -> LazyTensor:
    """One lazy tensor computed from several (e.g. ln0 folded into the embedding), read together when loaded."""
    probe = fn(*(torch.empty(x.shape, dtype=x.dtype, device="meta") for x in inputs))
    return LazyTensor(probe.shape, probe.dtype, lambda: fn(*(x.load() for x in inputs)))


TensorLike = Union[torch.Tensor, LazyTensor]


def as_lazy(tensors: Mapping[str, TensorLike]) -> dict[str, LazyTensor]:
    """Every value as a LazyTensor (tensors in memory are wrapped, lazy ones kept)."""
    return {k: v if isinstance(v, LazyTensor) else LazyTensor.of(v) for k, v in tensors.items()}
