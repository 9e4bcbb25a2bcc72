"""Write an ONNX model as one self-contained file without holding a copy of its weights in memory.

`ModelProto.SerializeToString()` of a model with N bytes of weights needs the N bytes in the protobuf
objects and N more for the serialized string. Instead the graph is written without its external
initializers, followed by one `graph { initializer { ... raw_data } }` record per tensor, whose raw bytes
are streamed from the external-data file in chunks. Protobuf merges repeated occurrences of a message
field, so every reader (onnx, ONNX Runtime, TensorRT's parser) sees the same model, while this writer
holds at most one chunk of weights. The result is deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2
_CHUNK = 16 << 20
TWO_GB = 2 * 1024**3  # protobuf's message size limit
# weights above this go to external data even unasked: every reader parses a single-file graph whole (the onnx
# checker, verify, ONNX Runtime), holding about twice its size, where external data is read tensor by tensor
INLINE_WEIGHTS_MAX = 1 << 30


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, length: int) -> bytes:
    """Tag and length prefix of a length-delimited protobuf field."""
    return _varint(field << 3 | _LENGTH_DELIMITED) + _varint(length)


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


def _write_tensor_record(out: BinaryIO, tensor: onnx.TensorProto, base: Path) -> None:
    location, offset, length = external_location(tensor)
    data_path = base / location
    if length is None:
        length = data_path.stat().st_size - offset
    meta = _copy(tensor)
    del meta.external_data[:]
    meta.ClearField("data_location")
    head = meta.SerializeToString()
    tensor_len = len(head) + len(_key(_TENSOR_RAW_DATA, length)) + length
    graph_len = len(_key(_GRAPH_INITIALIZER, tensor_len)) + tensor_len
    out.write(_key(_MODEL_GRAPH, graph_len) + _key(_GRAPH_INITIALIZER, tensor_len) + head
              + _key(_TENSOR_RAW_DATA, length))
    with open(data_path, "rb") as data:
        data.seek(offset)
        remaining = length
        while remaining:
            block = data.read(min(_CHUNK, remaining))
            if not block:
                raise OSError(f"{data_path}: external data ends before tensor {tensor.name!r} does")
            out.write(block)
            remaining -= len(block)


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    return out


def inline_external_data(src: str | Path, dst: str | Path) -> None:
    """`src` (an ONNX file whose weights live in external data) -> `dst`, one file, same model."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    external_copies = [_copy(t) for t in model.graph.initializer if uses_external_data(t)]
    inline = [_copy(t) for t in model.graph.initializer if not uses_external_data(t)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inline)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        with open(tmp, "wb") as out:
            out.write(model.SerializeToString())
            for tensor in external_copies:
                _write_tensor_record(out, tensor, src.parent)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


