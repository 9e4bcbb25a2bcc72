"""Rewrite an int8 / int5 / int4 graph's weight products for the CPU operator library: every

    com.microsoft::MatMulNBits(X, B, scales, zero_points; bits, block_size, accuracy_level 4)

whose format the operators take (8-bit blocks of 16 or 32 values, 4-bit blocks of 32, uint8 zero points: what
export/quantize.py writes) becomes `ai.rwkv_deploy.cpu::BlockQuantMatMul(X, W; bits, block_size, N)`, W the same
values, scales and zero points interleaved 16 output rows at a time (`pack_weights`, the layout of
runtime/native/kernels.h), so one int8 x uint8 dot-product instruction advances 16 rows. It computes the same
function (X quantized to int8 per block, as accuracy_level 4 asks). Products in another format, and the fp32
ones, are left alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN

from .graph_edit import copy_of, finish

OP = "BlockQuantMatMul"
SOURCE_OP, SOURCE_DOMAIN = "MatMulNBits", "com.microsoft"
FORMATS = {(8, 16), (8, 32), (4, 32)}  # (bits, block_size) the operator's kernels take
ACCURACY_INT8 = 4  # MatMulNBits' accuracy_level for int8 activations: the arithmetic BlockQuantMatMul does
GROUP_ROWS = 16  # output rows interleaved together (kernels.h kGroupRows)


def pack_weights(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, block: int) -> np.ndarray:
    """MatMulNBits' B [N, blocks, block * bits / 8], scales [N * blocks] and zero points -> BlockQuantMatMul's W
    [ceil(N / 16), blocks, bytes]: per group of 16 rows and block, the rows' values in 64-byte chunks (8-bit:
    row j's values 4c .. 4c + 3 at bytes 4j .. 4j + 3 of chunk c; 4-bit: values 8c + i and 8c + 4 + i in the low
    and high nibble of byte 4j + i), then the 16 fp32 scales, then the 16 zero points (4-bit: two per byte)."""
    n, blocks = b.shape[0], b.shape[1]
    rows = -(-n // GROUP_ROWS) * GROUP_ROWS  # past N: zero values, scales and zero points
    q = np.zeros((rows, blocks, block), np.uint8)
    q[:n] = b if bits == 8 else np.stack([b & 15, b >> 4], axis=-1).reshape(n, blocks, block)
    s = np.zeros((rows, blocks), np.float32)
    s[:n] = scales.reshape(n, blocks)
    zp = zero_points.reshape(n, -1)
    z = np.zeros((rows, blocks), np.uint8)
    z[:n] = (zp if bits == 8 else np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1))[:, :blocks]
    groups = rows // GROUP_ROWS
    q = q.reshape(groups, GROUP_ROWS, blocks, block)
    if bits == 8:  # [group, row, block, chunk, 4] -> [group, block, chunk, row, 4]
        values = q.reshape(groups, GROUP_ROWS, blocks, block // 4, 4).transpose(0, 2, 3, 1, 4)
    else:
        v = q.reshape(groups, GROUP_ROWS, blocks, block // 8, 2, 4)
        values = (v[..., 0, :] | (v[..., 1, :] << 4)).transpose(0, 2, 3, 1, 4)
    s_bytes = np.ascontiguousarray(s.reshape(groups, GROUP_ROWS, blocks).transpose(0, 2, 1)).view(np.uint8)
    z = z.reshape(groups, GROUP_ROWS, blocks).transpose(0, 2, 1)
    if bits == 4:
        z = z[..., 0::2] | (z[..., 1::2] << 4)
    return np.concatenate([np.ascontiguousarray(values).reshape(groups, blocks, -1), s_bytes,
                           np.ascontiguousarray(z)], axis=-1)


def _attributes(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _takes(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    if node.op_type != SOURCE_OP or node.domain != SOURCE_DOMAIN or len(node.input) != 4 or not node.input[3]:
        return False
    attrs = _attributes(node)
    return ((attrs.get("bits"), attrs.get("block_size")) in FORMATS and attrs.get("accuracy_level") == ACCURACY_INT8
            and attrs.get("N", 0) > 0 and types.get(node.input[1]) == TensorProto.UINT8
            and types.get(node.input[3]) == TensorProto.UINT8 and types.get(node.input[2]) == TensorProto.FLOAT)


def rewrite_quant_products(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with its MatMulNBits products on BlockQuantMatMul (weights packed), and how many were
    rewritten."""
    out = copy_of(model)
    inits = {t.name: t for t in out.graph.initializer}
    types = {name: t.data_type for name, t in inits.items()}
    packed: dict[str, onnx.TensorProto] = {}
    count = 0
    for index, node in enumerate(out.graph.node):
        if not _takes(node, types):
            continue
        attrs = _attributes(node)
        name = node.input[1] + ".packed"
        if name not in packed:
            b, scales, zero_points = (numpy_helper.to_array(inits[i]) for i in node.input[1:4])
            packed[name] = numpy_helper.from_array(
                pack_weights(b.reshape(attrs["N"], -1, b.shape[-1]), scales, zero_points, attrs["bits"],
                             attrs["block_size"]), name)
        out.graph.node[index].CopyFrom(helper.make_node(
            OP, [node.input[0], name], list(node.output), name=(node.name or f"matmul{index}") + "/q",
            domain=CPU_OPS_DOMAIN, bits=attrs["bits"], block_size=attrs["block_size"], N=attrs["N"]))
        count += 1
    return finish(out, packed.values(), count)
