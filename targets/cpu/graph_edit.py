"""What every rewrite of a CPU graph (fp16_products, fp32_products, quant_products, rwkv7_wkv, token_shift) does
around its own matching: start from a copy, name the weights stored one output row per line, find producers,
readers and constants (GraphIndex), and finish (new weights in, what nobody reads any more out, rwkv-deploy's
operator domain imported once)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN, CPU_OPS_VERSION


def copy_of(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def rows_of(weight: onnx.TensorProto) -> onnx.TensorProto:
    """W [K, N] as Wᵀ [N, K], named `<W>.rows`: one output row per line, as Fp16MatMul and Fp32MatMul read it."""
    return numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name + ".rows")


def finish(model: onnx.ModelProto, new_weights: Iterable[onnx.TensorProto],
           rewritten: int) -> tuple[onnx.ModelProto, int]:
    """(`model` with `new_weights` added, nodes and weights nobody reads removed, and rwkv-deploy's operator
    domain imported when `rewritten` > 0, once), `rewritten`."""
    model.graph.initializer.extend(new_weights)
    drop_unused(model.graph)
    if rewritten and not any(o.domain == CPU_OPS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CPU_OPS_DOMAIN, CPU_OPS_VERSION))
    return model, rewritten


def _read_names(node: onnx.NodeProto) -> set[str]:
    """The names `node` reads: its inputs, and every name read inside its subgraphs (Scan/Loop/If bodies read
    outer values by name)."""
    names = set(node.input)
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in sub.node:
                names |= _read_names(inner)
    return names


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (the Casts a rewrite left behind) and initializers nobody reads."""
    while True:
        needed = {o.name for o in graph.output} | {name for node in graph.node for name in _read_names(node)}
        keep = [n for n in graph.node if any(o in needed for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    needed = {name for node in graph.node for name in _read_names(node)}
    kept = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)


class NoMatch(Exception):
    """Nodes are not the pattern a fusion looks for (says which check failed)."""


@dataclass
class GraphIndex:
    """Who produces and who reads each name, and the constant values, of a graph being matched."""

    producer: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    constants: dict[str, onnx.TensorProto]  # initializers and Constant nodes' values, read when asked for
    inputs: dict[str, onnx.ValueInfoProto]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> "GraphIndex":
        producer, readers, constants = {}, {}, {t.name: t for t in graph.initializer}
        for node in graph.node:
            for name in node.output:
                producer[name] = node
            for name in _read_names(node):  # a subgraph's reads count: nothing it reads may be fused away
                readers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain == "" and node.attribute[0].name == "value":
                constants[node.output[0]] = node.attribute[0].t
        return cls(producer, readers, constants, {i.name: i for i in graph.input})

    def through_reshapes(self, name: str) -> str:
        """The name a chain of Reshapes ending in `name` starts from."""
        while (node := self.producer.get(name)) is not None and node.op_type == "Reshape" and node.domain == "":
            name = node.input[0]
        return name

    def node(self, name: str, op_type: str) -> onnx.NodeProto:
        """The `op_type` node producing `name` (Reshapes looked through)."""
        node = self.producer.get(self.through_reshapes(name))
        if node is None or node.op_type != op_type or node.domain != "":
            raise NoMatch(f"{name}: not produced by {op_type}")
        return node

    def reader(self, name: str, op_type: str) -> onnx.NodeProto:
        """The one `op_type` node reading `name` (through Reshapes read by nothing else)."""
        while True:
            readers = self.readers.get(name, [])
            if len(readers) != 1:
                raise NoMatch(f"{name}: read by {len(readers)} nodes, expected one {op_type}")
            node = readers[0]
            if node.op_type == "Reshape" and node.domain == "" and op_type != "Reshape":
                name = node.output[0]
                continue
            if node.op_type != op_type or node.domain != "":
                raise NoMatch(f"{name}: read by {node.op_type}, expected {op_type}")
            return node

    def constant(self, name: str, most: int = 1 << 16) -> np.ndarray:
        """The value of the constant `name`, when it holds at most `most` values (the pattern's are per-channel
        vectors and scalars; weights are never read here)."""
        tensor = self.constants.get(name)
        if tensor is None or int(np.prod(tensor.dims)) > most:
            raise NoMatch(f"{name}: not a constant of at most {most} values")
        return numpy_helper.to_array(tensor)

    def scalar(self, name: str, expected: float | None = None) -> float:
        value = self.constant(name)
        if value.size != 1 or (expected is not None and not np.isclose(float(value.reshape(())), expected)):
            raise NoMatch(f"{name}: expected the scalar {expected}")
        return float(value.reshape(()))
