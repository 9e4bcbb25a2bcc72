"""The recurrent state a deployed model carries between tokens, built from the manifest alone.

A `RecurrentState` is an immutable list of tensors in manifest order. Backends may hold values in
their own form (an ONNX Runtime `OrtValue` on a GPU); everything that needs the numbers on the host
(`rows`, `concat`, `save`) converts with `host()`, so this module needs numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rwkv_deploy.package.manifest import Manifest, StateEntry
from rwkv_deploy.package.state_files import (StateError, concrete_shape, graph_sha256, read_state_file,
                                             write_state_file)

__all__ = ["RecurrentState", "StateError", "host", "shape_and_dtype"]

_ORT_DTYPES = {"tensor(float)": np.dtype("float32"), "tensor(float16)": np.dtype("float16")}


def host(value: Any) -> np.ndarray:
    """The value as a numpy array (an `OrtValue` is copied off its device; on the CPU it is a view)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def shape_and_dtype(value: Any) -> tuple[tuple[int, ...], np.dtype | str]:
    """(shape, dtype) of a numpy array or an `OrtValue`, without copying device memory. The dtype
    compares equal to manifest dtype names ("float32"); ORT types numpy lacks stay strings."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype
    return tuple(value.shape()), _ORT_DTYPES.get(value.data_type(), value.data_type())


@dataclass(frozen=True)
class RecurrentState:
    """State tensors (batch first) in manifest order, and the graph they belong to."""

    names: tuple[str, ...]
    values: tuple[Any, ...]
    graph_sha256: str | None = None

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def fresh(cls, manifest: Manifest, batch: int,
              initial: Mapping[str, np.ndarray] | None = None) -> "RecurrentState":
        """A fresh state for `batch` sequences: each entry's `init` fill, or for entries with an
        `init_file` the per-sequence array `initial[name]` (see `load_initial_arrays`) repeated over batch."""
        if batch < 1:
            raise StateError(f"batch must be at least 1, got {batch}")
        values = []
        for entry in manifest.state:
            shape = concrete_shape(entry, batch)
            if entry.init_file is None:
                values.append(np.full(shape, entry.init, dtype=entry.dtype))
                continue
            if initial is None or entry.name not in initial:
                raise StateError(f"state tensor {entry.name}: its initial value ({entry.init_file}) was not given")
            values.append(np.ascontiguousarray(np.broadcast_to(initial[entry.name].astype(entry.dtype), shape)))
        return cls(tuple(e.name for e in manifest.state), tuple(values), graph_sha256(manifest))

    def replace(self, values: Sequence[Any]) -> "RecurrentState":
        """The same model's state with new tensors (a backend's step output)."""
        return RecurrentState(self.names, tuple(values), self.graph_sha256)

    # -- inspecting ------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return shape_and_dtype(self.values[0])[0][0]

    def check(self, entries: Sequence[StateEntry], batch: int) -> None:
        """Raise StateError naming the first tensor whose count, shape or dtype the graph would reject."""
        if len(self.values) != len(entries):
            raise StateError(f"state has {len(self.values)} tensors, the model expects {len(entries)} "
                             f"({', '.join(e.name for e in entries[:3])}, ...)")
        for entry, value in zip(entries, self.values):
            shape, dtype = shape_and_dtype(value)
            want = concrete_shape(entry, batch)
            if shape != want:
                raise StateError(f"state tensor {entry.name} has shape {list(shape)}, expected {list(want)}")
            if dtype != entry.dtype:  # np.dtype == "float32" compares by value, fast; .name is slow
                raise StateError(f"state tensor {entry.name} has dtype {dtype}, expected {entry.dtype}")

    def numpy(self) -> "RecurrentState":
        """This state with every tensor on the host as numpy."""
        return self.replace([host(v) for v in self.values])

    # -- copying and batching --------------------------------------------------------------------
    def clone(self) -> "RecurrentState":
        """An independent copy: nothing done to either state can change the other."""
        return self.replace([host(v).copy() for v in self.values])

    def rows(self, indices: Sequence[int]) -> "RecurrentState":
        """The state of the sequences at `indices` (in that order), as a new batch."""
        index = np.asarray(indices, dtype=np.int64)
        return self.replace([host(v)[index] for v in self.values])

    @staticmethod
    def concat(states: Sequence["RecurrentState"]) -> "RecurrentState":
        """One batch holding the sequences of `states` in order; they must belong to the same model."""
        if not states:
            raise StateError("concat needs at least one state")
        first = states[0]
        for other in states[1:]:
            if other.names != first.names or other.graph_sha256 != first.graph_sha256:
                raise StateError("cannot concatenate states of different models")
        if len(states) == 1:
            return first
        columns = zip(*(s.values for s in states))
        return first.replace([np.concatenate([host(v) for v in column]) for column in columns])

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a state file that a later process can `load` (atomically: a crash leaves the old file)."""
        write_state_file(path, self.names, [host(v) for v in self.values], self.graph_sha256)

    @classmethod
    def load(cls, path: str | os.PathLike, manifest: Manifest) -> "RecurrentState":
        """A state written by `save`; StateError if the file is not one or belongs to another model."""
        names, arrays = read_state_file(path, manifest)
        state = cls(names, tuple(arrays), graph_sha256(manifest))
        state.check(manifest.state, state.batch)
        return state
