"""What every rewrite of a CPU graph (fp16_products, fp32_products, quant_products) does around its own matching:
start from a copy, name the weights stored one output row per line, and finish (new weights in, what nobody reads
any more out, rwkv-deploy's operator domain imported once)."""

from __future__ import annotations

from collections.abc import Iterable

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
