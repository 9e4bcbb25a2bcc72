"""Trace without weights, then stream them into the ONNX file: export in the memory of one tensor.

torch.onnx traces a model whose parameters live on the meta device (no memory). Each initializer named after
a parameter then gets an `onnx_ir.LazyTensor` that reads that parameter from the checkpoint (`models.streaming.
graph_weights`) in the initializer's dtype. The exporter's optimizer would fold every `Transpose` of a weight
(how `nn.Linear` traces) into a new in-memory tensor, holding a whole model's worth of transposed copies;
`fold_weight_transposes` does that folding first, lazily, under the same names, and the optimizer then runs
with one more rule: never fold a node that reads a large lazy weight. Saving writes each tensor to the
external-data file as it is read, a bounded number of bytes in flight. The graph that comes out is the one
the exporter writes for a model with its weights in memory (same nodes, same initializer names, same bytes:
tests/export/test_weight_streaming.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from rwkv_deploy.models.checkpoint.lazy import LazyTensor

PARAMETER_PREFIX = "model."  # StepGraph / PrefillGraph hold the reference model as `model`
FOLD_INPUT_LIMIT = 8192  # onnxscript's constant-folding input limit: larger lazy weights are never folded
CACHE_BYTES = 1 << 20  # small lazy tensors (vectors) are kept once read: the optimizer reads them repeatedly
MAX_IN_FLIGHT_BYTES = 256 << 20  # bytes the writer holds besides the tensor being read

_TORCH_DTYPES = {ir.DataType.FLOAT: torch.float32, ir.DataType.FLOAT16: torch.float16, ir.DataType.DOUBLE: torch.float64}


class MissingWeightError(ValueError):
    """A traced parameter with no weight to read (the model and the weights do not belong together)."""


def _reader(weight: LazyTensor, dtype: ir.DataType, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
    torch_dtype = _TORCH_DTYPES[dtype]

    def read() -> ir.Tensor:
        values = weight.load()
        if transform is not None:
            values = transform(values)
        return ir.tensor(values.to(torch_dtype).contiguous().numpy())
    return read


def _lazy(read: Callable[[], ir.Tensor], dtype: ir.DataType, shape: ir.Shape, name: str | None) -> ir.LazyTensor:
    nbytes = int(np.prod(shape.numpy(), dtype=np.int64)) * dtype.itemsize
    return ir.LazyTensor(read, dtype, shape, cache=nbytes <= CACHE_BYTES, name=name)


def attach_weights(model: ir.Model, weights: Mapping[str, LazyTensor]) -> None:
    """Give every initializer that is a traced parameter (`model.<name>`) a lazy reader of `weights[<name>]`."""
    for name, value in model.graph.initializers.items():
        if not name.startswith(PARAMETER_PREFIX):
            continue
        key = name[len(PARAMETER_PREFIX):]
        if key not in weights:
            raise MissingWeightError(f"the traced graph has parameter {key} but the checkpoint has no such tensor")
        weight = weights[key]
        if tuple(weight.shape) != tuple(value.shape.numpy()):
            raise MissingWeightError(f"{key}: the checkpoint's shape {list(weight.shape)} is not the traced "
                                     f"{list(value.shape.numpy())}")
        value.const_value = _lazy(_reader(weight, value.dtype), value.dtype, value.shape, name)


def fold_weight_transposes(model: ir.Model) -> int:
    """Replace each `Transpose` of a lazy weight that nothing else reads by a lazy initializer holding the
    transposed weight, named as the Transpose's output (as the optimizer names what it folds). Returns the count."""
    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        source = node.inputs[0]
        if (source is None or not source.is_initializer() or not isinstance(source.const_value, ir.LazyTensor)
                or len(source.uses()) != 1 or source.is_graph_output()):
            continue
        rank = len(source.shape)
        perm_attr = node.attributes.get("perm")
        perm = tuple(perm_attr.as_ints()) if perm_attr is not None else tuple(reversed(range(rank)))
        output = node.outputs[0]
        shape = ir.Shape([source.shape[i] for i in perm])
        lazy_source = source.const_value
        read = (lambda lazy_source=lazy_source, perm=perm:
                ir.tensor(np.ascontiguousarray(np.transpose(lazy_source.numpy(), perm))))
        folded_value = ir.Value(name=output.name, type=ir.TensorType(source.dtype), shape=shape,
                                const_value=_lazy(read, source.dtype, shape, output.name))
        output.replace_all_uses_with(folded_value)
        graph.remove(node, safe=True)
        graph.initializers.pop(source.name)
        graph.register_initializer(folded_value)
        folded += 1
    return folded


def _reads_large_lazy_weight(node: ir.Node) -> bool | None:
    for value in node.inputs:
        if value is not None and isinstance(value.const_value, ir.LazyTensor) and value.const_value.size > FOLD_INPUT_LIMIT:
            return False
    return None  # the optimizer's own rules


def optimize(model: ir.Model) -> None:
    """The exporter's optimization (torch.onnx `optimize=True`: onnxscript's optimizer and fusions), except that
    no node reading a large lazy weight is folded into memory."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    onnxscript.optimizer.optimize_ir(model, should_fold=_reads_large_lazy_weight)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def save_streaming(model: ir.Model, path: Path) -> Path:
    """Write the graph to `path` and every initializer to `path`.data, each read as it is written. Returns the
    data file's path."""
    data = path.with_name(path.name + ".data")
    ir.save(model, path, external_data=data.name, max_in_flight_bytes=MAX_IN_FLIGHT_BYTES)
    return data
