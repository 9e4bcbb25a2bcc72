"""One weights file for several graphs of a package: each distinct tensor stored once.

A package with a step graph and a prefill graph holds the same weights twice after tracing. This rewrites
the graphs so every initializer above `INLINE_MAX` bytes points (ONNX external data: location, offset,
length) into one shared file, and identical tensors (same dtype, shape and bytes, whatever their names)
share one copy. Tensors are read and written one at a time, so the rewrite needs memory for the largest
tensor only, plus the graph structures.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data

from .onnx_file import TensorReader, subgraphs

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
