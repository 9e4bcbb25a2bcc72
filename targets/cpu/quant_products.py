"""Rewrite an int8 / int5 / int4 graph's weight products for the CPU operator library: every

    com.microsoft::MatMulNBits(X, B, scales, zero_points; bits, block_size, accuracy_level 4)

whose format the operators take (8-bit blocks of 16 or 32 values, 4-bit blocks of 32, uint8 zero points: what
export/quantize.py writes) becomes `ai.rwkv_deploy.cpu::BlockQuantMatMul` over the very same tensors. It computes
the same function (X quantized to int8 per block, as accuracy_level 4 asks), with int8 x uint8 dot products on
AVX-512 VNNI where the machine has it. Products in another format, and the fp32 ones, are left alone."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN, CPU_OPS_VERSION

OP = "BlockQuantMatMul"
SOURCE_OP, SOURCE_DOMAIN = "MatMulNBits", "com.microsoft"
FORMATS = {(8, 16), (8, 32), (4, 32)}  # (bits, block_size) the operator's kernels take
ACCURACY_INT8 = 4  # MatMulNBits' accuracy_level for int8 activations: the arithmetic BlockQuantMatMul does


def _attributes(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _takes(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    if node.op_type != SOURCE_OP or node.domain != SOURCE_DOMAIN or len(node.input) != 4 or not node.input[3]:
        return False
    attrs = _attributes(node)
    return ((attrs.get("bits"), attrs.get("block_size")) in FORMATS and attrs.get("accuracy_level") == ACCURACY_INT8
            and types.get(node.input[3]) == TensorProto.UINT8 and types.get(node.input[2]) == TensorProto.FLOAT)


def rewrite_quant_products(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with its MatMulNBits products on BlockQuantMatMul, and how many were rewritten."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = {t.name: t.data_type for t in out.graph.initializer}
    count = 0
    for index, node in enumerate(out.graph.node):
        if not _takes(node, types):
            continue
        attrs = _attributes(node)
        out.graph.node[index].CopyFrom(helper.make_node(
            OP, list(node.input), list(node.output), name=(node.name or f"matmul{index}") + "/q", domain=CPU_OPS_DOMAIN,
            bits=attrs["bits"], block_size=attrs["block_size"]))
        count += 1
    if count:
        out.opset_import.append(helper.make_opsetid(CPU_OPS_DOMAIN, CPU_OPS_VERSION))
    return out, count
