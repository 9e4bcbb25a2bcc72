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
from typing import BinaryIO

import onnx
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data

from rwkv_deploy.package.onnx_weights import external_location

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


