"""Optimization profiles: the batch ranges an engine accepts, as min/opt/max shapes for every input.

TensorRT needs `profile.set_shape(name, min, opt, max)` for every input with a dynamic dim, in every
profile. In a package graph only the batch dim is dynamic, and every input (the token ids and every
state tensor) shares it, so one `--batch MIN:OPT:MAX` fixes the shapes of all inputs of one profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rwkv_deploy.errors import RwkvDeployError
from .manifest import Manifest
from .names import BATCH_AXIS, MAX_BATCH

DEFAULT_BATCH = "1:1:8"

Shape = tuple[int, ...]


class ProfileError(RwkvDeployError, ValueError):
    """A batch range or manifest shape that cannot become an optimization profile."""

    exit_code = 2


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes one profile accepts; TensorRT tunes its kernels for `opt`."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """`MIN:OPT:MAX`, e.g. `1:4:16`."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ProfileError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:1:8")
        try:
            low, opt, high = (int(p) for p in parts)
        except ValueError:
            raise ProfileError(f"--batch {text!r}: MIN, OPT and MAX must be whole numbers") from None
        return cls(low, opt, high).validated(text)

    def validated(self, text: str | None = None) -> "BatchRange":
        given = text or f"{self.min}:{self.opt}:{self.max}"
        if self.min < 1:
            raise ProfileError(f"--batch {given}: MIN must be at least 1")
        if not self.min <= self.opt <= self.max:
            raise ProfileError(f"--batch {given}: needs MIN <= OPT <= MAX")
        if self.max > MAX_BATCH:
            raise ProfileError(f"--batch {given}: MAX is above {MAX_BATCH}, the largest batch the graph declares")
        return self

    def __contains__(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class InputShapes:
    name: str
    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class OptimizationProfile:
    """One profile: its batch range and the resulting shapes of every graph input, in graph order."""

    batch: BatchRange
    inputs: tuple[InputShapes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": {"min": self.batch.min, "opt": self.batch.opt, "max": self.batch.max},
                "inputs": {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for s in self.inputs}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimizationProfile":
        batch = BatchRange(**data["batch"])
        inputs = tuple(InputShapes(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
                       for name, s in data["inputs"].items())
        return cls(batch, inputs)


def input_dims(manifest: Manifest) -> list[tuple[str, list[int | str]]]:
    """(input name, dims with `batch` first) for every graph input, in graph order (token, then state)."""
    dims: list[tuple[str, list[int | str]]] = [(manifest.token_input, [BATCH_AXIS])]
    for entry in manifest.state:
        shape = list(entry.shape)
        if not shape or shape[0] != BATCH_AXIS or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ProfileError(f"state {entry.name!r} has shape {shape}; a profile needs [batch, fixed sizes...]")
        dims.append((entry.input, shape))
    return dims


def _concrete(dims: Sequence[int | str], batch: int) -> Shape:
    return tuple(batch if d == BATCH_AXIS else int(d) for d in dims)


def parse_batch_ranges(texts: Sequence[str] | None) -> list[BatchRange]:
    """The `--batch` options (none: the default range); the same range twice is an error."""
    ranges = [BatchRange.parse(t) for t in (texts or [DEFAULT_BATCH])]
    seen = set()
    for r in ranges:
        if r in seen:
            raise ProfileError(f"--batch {r} is given twice")
        seen.add(r)
    return ranges


def make_profiles(manifest: Manifest, ranges: Sequence[BatchRange]) -> list[OptimizationProfile]:
    """One profile per batch range, covering every input of the package's step graph."""
    if not ranges:
        raise ProfileError("at least one batch range is needed")
    dims = input_dims(manifest)
    return [OptimizationProfile(r.validated(), tuple(
        InputShapes(name, _concrete(d, r.min), _concrete(d, r.opt), _concrete(d, r.max)) for name, d in dims))
        for r in ranges]


def select_profile(ranges: Sequence[BatchRange], batch: int) -> int:
    """The profile to run `batch` with: among those that accept it, the one tuned closest to it
    (ties: the first). Raises ProfileError naming the ranges the engine was built for."""
    fitting = [i for i, r in enumerate(ranges) if batch in r]
    if not fitting:
        built = ", ".join(str(r) for r in ranges)
        raise ProfileError(f"batch {batch} is outside every optimization profile of this engine ({built}); "
                           f"rebuild it with a --batch range that includes {batch}")
    return min(fitting, key=lambda i: (abs(ranges[i].opt - batch), i))
