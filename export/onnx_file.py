"""Write an ONNX model as one self-contained file without holding a second copy of its weights.

`ModelProto.SerializeToString()` of a model with N bytes of weights needs the N bytes in the protobuf
objects and N more for the serialized string. Instead the graph is written without its initializers,
followed by one `graph { initializer { ... } }` record per tensor: protobuf merges repeated occurrences
of a message field, so every reader (onnx, ONNX Runtime, TensorRT's parser) sees the same model, while
this writer holds one tensor at a time. The result is deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data


def inline_external_data(src: str | Path, dst: str | Path) -> None:
    """`src` (an ONNX file whose weights live in external data) -> `dst`, one file, same model."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    initializers = list(model.graph.initializer)
    del model.graph.initializer[:]
    tmp = dst.with_name(dst.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
        for tensor in initializers:
            if uses_external_data(tensor):
                load_external_data_for_tensor(tensor, str(src.parent))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
            record = onnx.ModelProto()
            record.graph.initializer.append(tensor)
            f.write(record.SerializeToString())
            tensor.Clear()
    os.replace(tmp, dst)
