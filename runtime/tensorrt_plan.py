"""How the TensorRT backend binds a step's tensors, as plain data and plain bookkeeping (no TensorRT, no CUDA).

`IOBindingPlan`: for a manifest and a batch size, every engine tensor's shape, dtype, byte size and the
buffer it is bound to. The recurrent state lives in two fixed buffer sets on the GPU: a step reads one
set and writes the other (TensorRT does not allow an output to alias an input), so the sets swap roles
every step and no state is ever copied in steady state.

`StateBuffers`: the two sets for one batch size, and the handles (`StateHandle`) through which states
in those buffers are given out. A handle stays valid while its caller holds it: before a step writes
into a set, any state still held in that set is moved to a private copy first (live handles are
tracked with weak references, so in the usual loop, where the old state is dropped, nothing is copied).
Buffers are whatever the `BufferOps` make (PyTorch CUDA tensors in the backend, numpy arrays in tests).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from rwkv_deploy.package.manifest import Manifest

from rwkv_deploy.package.state_files import concrete_shape

from .state import host

T = TypeVar("T")

# engine.get_tensor_dtype(name).name -> numpy/torch dtype name
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
              "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
_ORT_TYPE_NAMES = {"float32": "tensor(float)", "float16": "tensor(float16)"}  # what state.py understands
TOKEN, LOGITS, STATE = "token", "logits", "state"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Binding:
    """Engine tensor `name` bound to `buffer` ("token", "logits", or "state" set `set` slot `slot`)."""

    name: str
    mode: str  # "input" or "output"
    buffer: str
    set: int | None
    slot: int | None
    spec: TensorSpec


@dataclass(frozen=True)
class StateSlot:
    """One state tensor: read from `input`, written to `output`, same shape and dtype."""

    entry: str
    input: str
    output: str
    spec: TensorSpec


@dataclass(frozen=True)
class IOBindingPlan:
    batch: int
    token: TensorSpec
    logits: TensorSpec
    states: tuple[StateSlot, ...]

    @classmethod
    def for_manifest(cls, manifest: Manifest, batch: int, vocab_size: int | None = None) -> "IOBindingPlan":
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        vocab = manifest.model.vocab_size if vocab_size is None else vocab_size
        states = tuple(StateSlot(e.name, e.input, e.output, TensorSpec(e.input, concrete_shape(e, batch), e.dtype))
                       for e in manifest.state)
        return cls(batch, TensorSpec(manifest.token_input, (batch,), "int64"),
                   TensorSpec(manifest.logits_output, (batch, vocab), "float32"), states)

    @property
    def state_set_bytes(self) -> int:
        return sum(s.spec.nbytes for s in self.states)

    @property
    def device_bytes(self) -> int:
        """Buffers the backend holds for this batch size: token, logits and both state sets."""
        return self.token.nbytes + self.logits.nbytes + 2 * self.state_set_bytes

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """What `context.set_input_shape` gets, every call."""
        return {self.token.name: self.token.shape, **{s.input: s.spec.shape for s in self.states}}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.logits.name: self.logits.shape, **{s.output: s.spec.shape for s in self.states}}

    def bindings(self, read_set: int) -> list[Binding]:
        """Every engine tensor's buffer for a step that reads state set `read_set` and writes the other."""
        if read_set not in (0, 1):
            raise ValueError(f"read_set is 0 or 1, got {read_set}")
        write_set = 1 - read_set
        out = [Binding(self.token.name, "input", TOKEN, None, None, self.token)]
        out += [Binding(s.input, "input", STATE, read_set, i, s.spec) for i, s in enumerate(self.states)]
        out.append(Binding(self.logits.name, "output", LOGITS, None, None, self.logits))
        out += [Binding(s.output, "output", STATE, write_set, i, TensorSpec(s.output, s.spec.shape, s.spec.dtype))
                for i, s in enumerate(self.states)]
        return out

    @staticmethod
    def swap_schedule(first_read: int, steps: int) -> list[tuple[int, int]]:
        """(read set, write set) of consecutive steps when each feeds the state the previous one returned."""
        return [((first_read + k) % 2, (first_read + k + 1) % 2) for k in range(steps)]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "device_bytes": self.device_bytes, "state_set_bytes": self.state_set_bytes,
                "bindings": [{"name": b.name, "mode": b.mode, "buffer": b.buffer, "set": b.set, "slot": b.slot,
                              "shape": list(b.spec.shape), "dtype": b.spec.dtype, "nbytes": b.spec.nbytes}
                             for b in self.bindings(0)]}


class BufferOps(Protocol[T]):
    """What `StateBuffers` and `StateHandle` need from a device's arrays."""

    def empty(self, shape: tuple[int, ...], dtype: str) -> T: ...
    def upload(self, dst: T, value: Any) -> None: ...  # value: numpy array, or another buffer
    def clone(self, src: T) -> T: ...
    def to_host(self, src: T) -> np.ndarray: ...


class StateHandle(Generic[T]):
    """One state tensor in device memory, in the form `RecurrentState` works with (like an ORT `OrtValue`:
    `shape()`, `data_type()`, `numpy()`). While `owner` is set it lives in that `StateBuffers`' set."""

    def __init__(self, tensor: T, ops: BufferOps[T], spec: TensorSpec, owner: "StateBuffers[T] | None",
                 set_index: int | None, slot: int | None) -> None:
        self.tensor, self.ops, self.spec = tensor, ops, spec
        self.owner, self.set_index, self.slot = owner, set_index, slot

    def shape(self) -> tuple[int, ...]:
        return self.spec.shape

    def data_type(self) -> str:
        return _ORT_TYPE_NAMES.get(self.spec.dtype, f"tensor({self.spec.dtype})")

    def numpy(self) -> np.ndarray:
        return self.ops.to_host(self.tensor)

    def detach(self) -> None:
        """Move to a private copy: the buffer it was in is about to be overwritten."""
        self.tensor = self.ops.clone(self.tensor)
        self.owner = self.set_index = self.slot = None


class StateBuffers(Generic[T]):
    """The two state buffer sets of one batch size, and the states given out from them."""

    def __init__(self, plan: IOBindingPlan, ops: BufferOps[T]) -> None:
        self.plan, self.ops = plan, ops
        self.sets: tuple[list[T], list[T]] = tuple(
            [ops.empty(s.spec.shape, s.spec.dtype) for s in plan.states] for _ in range(2))
        self._given: tuple[weakref.WeakSet, weakref.WeakSet] = (weakref.WeakSet(), weakref.WeakSet())

    def set_holding(self, values: Sequence[Any]) -> int | None:
        """The set that `values` are, slot for slot, the live contents of; None if they are anything else."""
        for k in (0, 1):
            if len(values) == len(self.sets[k]) and all(
                    isinstance(v, StateHandle) and v.owner is self and v.set_index == k and v.slot == i
                    for i, v in enumerate(values)):
                return k
        return None

    def stage(self, values: Sequence[Any]) -> int:
        """Prepare a step on `values`: returns the set to read (where they are, or where they are copied
        to); the other set, which the step writes, holds no live state afterwards."""
        read = self.set_holding(values)
        if read is None:
            read = 0 if not self._given[0] else 1 if not self._given[1] else 0
            self.release(read)
            for buffer, value in zip(self.sets[read], values):
                self.ops.upload(buffer, value.tensor if isinstance(value, StateHandle) else host(value))
        self.release(1 - read)
        return read

    def release(self, k: int) -> None:
        """Detach every live handle of set `k` so that the set may be overwritten."""
        for handle in list(self._given[k]):
            handle.detach()
        self._given[k].clear()

    def publish(self, k: int) -> list[StateHandle[T]]:
        """Handles to what a step just wrote into set `k`."""
        handles = [StateHandle(buffer, self.ops, slot.spec, self, k, i)
                   for i, (buffer, slot) in enumerate(zip(self.sets[k], self.plan.states))]
        self._given[k].update(handles)
        return handles

    def live(self, k: int) -> int:
        return len(self._given[k])


class NumpyBufferOps:
    """`BufferOps` on host numpy arrays: the device stand-in for tests and for reasoning about the plan."""

    def empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def upload(self, dst: np.ndarray, value: Any) -> None:
        np.copyto(dst, np.asarray(value))

    def clone(self, src: np.ndarray) -> np.ndarray:
        return src.copy()

    def to_host(self, src: np.ndarray) -> np.ndarray:
        return src.copy()


__all__ = ["Binding", "BufferOps", "IOBindingPlan", "NumpyBufferOps", "StateBuffers", "StateHandle", "StateSlot",
           "TRT_DTYPES", "TensorSpec"]
