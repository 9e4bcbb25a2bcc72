"""Optimization profiles: the batch (and prefill length) ranges an engine accepts, as min/opt/max shapes for
every input.

TensorRT needs `profile.set_shape(name, min, opt, max)` for every input with a dynamic dim, in every
profile. In the step graph only the batch dim is dynamic, and every input (the token ids and every state
tensor) shares it, so one `--batch MIN:OPT:MAX` fixes the shapes of all inputs of one profile. The prefill
graph's `tokens` input also has the length T: every profile of a prefill engine gets the `--tokens` range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rwkv_deploy.errors import RefusedError

from .manifest import Manifest
from .names import BATCH_AXIS, MAX_BATCH, PREFILL_GRAPH, PREFILL_TOKENS_INPUT, STEP_GRAPH, TIME_AXIS

MAX_TOKENS = 1 << 20  # the exporter declares T in [1, 2**20]
DEFAULT_BATCH = "1:1:8"
DEFAULT_TOKENS = "1:64:512"

Shape = tuple[int, ...]


class ProfileError(RefusedError, ValueError):
    """A batch range or manifest shape that cannot become an optimization profile."""


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes (or, for `--tokens`, prefill lengths) one profile accepts; TensorRT tunes for `opt`."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, option: str = "--batch") -> "BatchRange":
        """`MIN:OPT:MAX`, e.g. `1:4:16`."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ProfileError(f"{option} {text!r}: expected MIN:OPT:MAX, e.g. 1:1:8")
        try:
            low, opt, high = (int(p) for p in parts)
        except ValueError:
            raise ProfileError(f"{option} {text!r}: MIN, OPT and MAX must be whole numbers") from None
        return cls(low, opt, high).validated(text, option)

    def validated(self, text: str | None = None, option: str = "--batch") -> "BatchRange":
        given = text or f"{self.min}:{self.opt}:{self.max}"
        limit, what = (MAX_TOKENS, "prefill length") if option == "--tokens" else (MAX_BATCH, "batch")
        if self.min < 1:
            raise ProfileError(f"{option} {given}: MIN must be at least 1")
        if not self.min <= self.opt <= self.max:
            raise ProfileError(f"{option} {given}: needs MIN <= OPT <= MAX")
        if self.max > limit:
            raise ProfileError(f"{option} {given}: MAX is above {limit}, the largest {what} the graph declares")
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
    """One profile: its batch range (and prefill length range) and the resulting shapes of every graph input,
    in graph order."""

    batch: BatchRange
    inputs: tuple[InputShapes, ...]
    tokens: BatchRange | None = None

    def to_dict(self) -> dict[str, Any]:
        ranges = {"batch": self.batch} if self.tokens is None else {"batch": self.batch, "tokens": self.tokens}
        return {**{k: {"min": r.min, "opt": r.opt, "max": r.max} for k, r in ranges.items()},
                "inputs": {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for s in self.inputs}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimizationProfile":
        batch = BatchRange(**data["batch"])
        tokens = BatchRange(**data["tokens"]) if data.get("tokens") else None
        inputs = tuple(InputShapes(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
                       for name, s in data["inputs"].items())
        return cls(batch, inputs, tokens)


def input_dims(manifest: Manifest, graph: str = STEP_GRAPH) -> list[tuple[str, list[int | str]]]:
    """(input name, dims with `batch` first) for every input of the package's `graph`, in graph order (token
    ids, then state)."""
    tokens = (PREFILL_TOKENS_INPUT, [BATCH_AXIS, TIME_AXIS]) if graph == PREFILL_GRAPH else (manifest.token_input, [BATCH_AXIS])
    dims: list[tuple[str, list[int | str]]] = [tokens]
    for entry in manifest.state:
        shape = list(entry.shape)
        if not shape or shape[0] != BATCH_AXIS or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ProfileError(f"state {entry.name!r} has shape {shape}; a profile needs [batch, fixed sizes...]")
        dims.append((entry.input, shape))
    return dims


def _concrete(dims: Sequence[int | str], batch: int, tokens: int = 1) -> Shape:
    return tuple(batch if d == BATCH_AXIS else tokens if d == TIME_AXIS else int(d) for d in dims)


def parse_token_range(text: str | None) -> BatchRange:
    """The `--tokens` option (None: the default prefill length range)."""
    return BatchRange.parse(text or DEFAULT_TOKENS, "--tokens")


def parse_batch_ranges(texts: Sequence[str] | None) -> list[BatchRange]:
    """The `--batch` options (none: the default range); the same range twice is an error."""
    ranges = [BatchRange.parse(t) for t in (texts or [DEFAULT_BATCH])]
    seen = set()
    for r in ranges:
        if r in seen:
            raise ProfileError(f"--batch {r} is given twice")
        seen.add(r)
    return ranges


def make_profiles(manifest: Manifest, ranges: Sequence[BatchRange], graph: str = STEP_GRAPH,
                  tokens: BatchRange | None = None) -> list[OptimizationProfile]:
    """One profile per batch range, covering every input of the package's `graph`; a prefill graph's
    profiles all take the `tokens` range (default 1:64:512) for T."""
    if not ranges:
        raise ProfileError("at least one batch range is needed")
    dims = input_dims(manifest, graph)
    if graph != PREFILL_GRAPH:
        return [OptimizationProfile(r.validated(), tuple(
            InputShapes(name, _concrete(d, r.min), _concrete(d, r.opt), _concrete(d, r.max)) for name, d in dims))
            for r in ranges]
    t = (tokens or parse_token_range(None)).validated(option="--tokens")
    return [OptimizationProfile(r.validated(), tuple(
        InputShapes(name, _concrete(d, r.min, t.min), _concrete(d, r.opt, t.opt), _concrete(d, r.max, t.max))
        for name, d in dims), t) for r in ranges]


def select_profile(ranges: Sequence[BatchRange], batch: int) -> int:
    """The profile to run `batch` with: among those that accept it, the one tuned closest to it
    (ties: the first). Raises ProfileError naming the ranges the engine was built for."""
    fitting = [i for i, r in enumerate(ranges) if batch in r]
    if not fitting:
        built = ", ".join(str(r) for r in ranges)
        raise ProfileError(f"batch {batch} is outside every optimization profile of this engine ({built}); "
                           f"rebuild it with a --batch range that includes {batch}")
    return min(fitting, key=lambda i: (abs(ranges[i].opt - batch), i))
