"""ONNX tensors where they live (inline or external data), and one weights file for several graphs.

Shared by the export (a package's step and prefill graphs) and the deployment targets (a package's CPU step and
prefill graphs): `TensorReader` reads a graph's initializers one at a time, `share_weights` rewrites graphs so
that every distinct tensor above `INLINE_MAX` bytes is stored once in one file beside them (ONNX external data:
location, offset, length), identical tensors (same dtype, shape and bytes, whatever their names) sharing one
copy. Tensors are read and written one at a time, so a rewrite needs memory for the largest tensor only, plus
the graph structures.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (Scan/Loop/If bodies) inside it, at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from subgraphs(attribute.g)
            for sub in attribute.graphs:
                yield from subgraphs(sub)


def external_location(tensor: TensorProto) -> tuple[str, int, int | None]:
    """(file, offset, length or None for "to the end") of a tensor stored as ONNX external data."""
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), (int(info["length"]) if "length" in info else None)


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's values, wherever they are stored."""
    if uses_external_data(tensor):
        return external_location(tensor)[2] or 0
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return numpy_helper.to_array(tensor).nbytes


class TensorReader:
    """The values of a graph's initializers, inline or external; external tensors are read with plain file reads
    (not a memory map, whose touched pages would count as this process's memory until it closes), so a rewrite
    holds one tensor's bytes at a time (`with TensorReader(folder) as reader: ...`)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._files: dict[str, BinaryIO] = {}

    def raw(self, tensor: TensorProto) -> bytes | bytearray:
        if not uses_external_data(tensor):
            return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        location, offset, length = external_location(tensor)
        if location not in self._files:
            self._files[location] = open(self.base / location, "rb")
        f = self._files[location]
        size = os.fstat(f.fileno()).st_size
        end = size if length is None else offset + length
        if end > size or offset > end:
            raise OSError(f"{self.base / location}: external data ends before tensor {tensor.name!r} does")
        buffer = bytearray(end - offset)
        f.seek(offset)
        if f.readinto(buffer) != len(buffer):
            raise OSError(f"{self.base / location}: external data ends before tensor {tensor.name!r} does")
        return buffer

    def array(self, tensor: TensorProto) -> np.ndarray:
        if uses_external_data(tensor) or tensor.HasField("raw_data"):
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            return np.frombuffer(self.raw(tensor), dtype=dtype).reshape(tuple(tensor.dims))
        return numpy_helper.to_array(tensor)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PAGE_ALIGN = 4096  # page-aligned offsets let ONNX Runtime memory-map large weights
SMALL_ALIGN = 64  # tensors under PAGE_ALIGN_MIN bytes: cache-line alignment, no page of padding each
PAGE_ALIGN_MIN = 64 * 1024
INLINE_MAX = 1024  # smaller tensors stay inside the graph files


def _clear_payload(tensor: TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]


def _inline(tensor: TensorProto, payload: bytes | memoryview) -> None:
    _clear_payload(tensor)
    tensor.data_location = TensorProto.DEFAULT
    tensor.raw_data = bytes(payload)


class _WeightsWriter:
    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f, self.name = f, name
        self.offsets: dict[bytes, tuple[int, int]] = {}

    def place(self, tensor: TensorProto, payload: bytes | memoryview) -> None:
        key = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode() + payload).digest()
        if key not in self.offsets:
            align = PAGE_ALIGN if len(payload) >= PAGE_ALIGN_MIN else SMALL_ALIGN
            offset = -self.f.tell() % align + self.f.tell()
            self.f.seek(offset)
            self.f.write(payload)
            self.offsets[key] = (offset, len(payload))
        offset, length = self.offsets[key]
        _clear_payload(tensor)
        tensor.data_location = TensorProto.EXTERNAL
        for key_name, value in (("location", self.name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key_name, value


def share_weights(graph_paths: list[Path], data_name: str) -> int:
    """Rewrite the graphs (all in one directory) to keep their weights in `data_name` beside them.

    Returns the size of the shared file in bytes. Data files the graphs used before and no longer use are
    removed. Graph files are replaced atomically (written beside, then renamed)."""
    directory = graph_paths[0].parent
    data_path = directory / data_name
    staged_data = directory / f".staging-{data_name}"
    old_files: set[str] = set()
    staged_graphs = []
    with open(staged_data, "wb") as f:
        writer = _WeightsWriter(f, data_name)
        for path in graph_paths:
            model = onnx.load(str(path), load_external_data=False)
            with TensorReader(directory) as reader:
                for graph in subgraphs(model.graph):
                    for tensor in graph.initializer:
                        if uses_external_data(tensor):
                            old_files.update(e.value for e in tensor.external_data if e.key == "location")
                        payload = reader.raw(tensor)
                        if len(payload) > INLINE_MAX:
                            writer.place(tensor, payload)
                        elif uses_external_data(tensor):  # small, but in a file that is about to be removed
                            _inline(tensor, payload)
            staged = path.with_name(f".staging-{path.name}")
            onnx.save(model, str(staged))
            staged_graphs.append((staged, path))
        size = f.tell()
    os.replace(staged_data, data_path)
    for staged, path in staged_graphs:
        os.replace(staged, path)
    for name in old_files - {data_name}:
        (directory / name).unlink(missing_ok=True)
    return size
