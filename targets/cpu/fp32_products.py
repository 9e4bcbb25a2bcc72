"""Rewrite the fp32 weight products of a CPU step graph: every `MatMul(X, W float32 [K, N] initializer)` (the
low-rank (LoRA) products every package keeps in fp32) becomes `ai.rwkv_deploy.cpu::Fp32MatMul(X, Wᵀ [N, K])`,
the same fp32 arithmetic summed in another order, the weight stream prefetched. Products of two activations (the
WKV state's) stay as they are. (An fp32 package's own products stay on ONNX Runtime: graph_file.py.)"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN

from .graph_edit import copy_of, finish, rows_of

OP = "Fp32MatMul"


def rewrite_fp32_products(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with its fp32 weight products on Fp32MatMul, and how many were rewritten."""
    out = copy_of(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    transposed: dict[str, onnx.TensorProto] = {}
    count = 0
    for index, node in enumerate(graph.node):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and node.domain == "" else None
        if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2 or node.input[0] in inits:
            continue
        rows = weight.name + ".rows"
        if rows not in transposed:
            transposed[rows] = rows_of(weight)
        graph.node[index].CopyFrom(helper.make_node(OP, [node.input[0], rows], list(node.output),
                                                    name=(node.name or f"matmul{index}") + "/fp32",
                                                    domain=CPU_OPS_DOMAIN))
        count += 1
    return finish(out, transposed.values(), count)
