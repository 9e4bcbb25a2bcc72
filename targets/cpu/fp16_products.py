"""Rewrite an fp16 graph's weight products for the CPU operator library: every

    Cast(X -> float16) -> MatMul(·, W float16 [K, N] initializer) -> Cast(-> float)

becomes one `ai.rwkv_deploy.cpu::Fp16MatMul(X, Wᵀ [N, K] float16)`, which reads the weights as fp16 and computes
in fp32 without rounding X or the product to fp16: the portable graph's function within fp16 rounding, and closer
to fp32. ONNX Runtime's x86 path widens fp16 weights to fp32 at load time (twice the bytes per step and in memory).
Products whose pattern differs are left alone."""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import TensorProto, helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN

from .graph_edit import copy_of, finish, rows_of

OP = "Fp16MatMul"


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _cast_to(node: onnx.NodeProto | None, dtype: int) -> bool:
    return (node is not None and node.op_type == "Cast"
            and any(a.name == "to" and a.i == dtype for a in node.attribute))


def rewrite_fp16_products(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with its fp16 weight products on Fp16MatMul, and how many were rewritten."""
    out = copy_of(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    new_weights: dict[str, onnx.TensorProto] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        cast_in = producer.get(node.input[0])
        after = users.get(node.output[0], [])
        if (weight.data_type != TensorProto.FLOAT16 or len(weight.dims) != 2 or not _cast_to(cast_in, TensorProto.FLOAT16)
                or len(after) != 1 or not _cast_to(after[0], TensorProto.FLOAT) or node.output[0] in outputs):
            continue
        transposed = weight.name + ".rows"
        if transposed not in new_weights:
            new_weights[transposed] = rows_of(weight)
        cast_out = after[0]
        replace[index] = helper.make_node(OP, [cast_in.input[0], transposed], [cast_out.output[0]],
                                          name=(node.name or f"matmul{index}") + "/fp16", domain=CPU_OPS_DOMAIN)
        drop.add(id(cast_out))
    nodes = []
    for index, node in enumerate(graph.node):
        if id(node) in drop:
            continue
        nodes.append(replace.get(index, node))
    del graph.node[:]
    graph.node.extend(nodes)
    return finish(out, new_weights.values(), len(replace))
