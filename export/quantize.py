"""Weight-only blockwise quantization of an exported fp32 ONNX graph: `--precision int8` and `int4`.

Works on any graph file the exporter writes (the step graph, and any further graph of a package), after
export, on the ONNX file itself:

- every `MatMul` whose right-hand side is a constant 2-D float32 matrix W [K, N] (the linear layers, the
  low-rank (LoRA) products of v6/v7 and the head) becomes ONNX Runtime's `com.microsoft::MatMulNBits`:
  W is stored as `bits`-bit integers in blocks of `block_size` consecutive K values, each block with its
  own float32 scale (and, asymmetric, its own zero point); ONNX Runtime's kernels read the packed
  weights directly, so a decode step moves 4x (int8) or ~7x (int4) fewer weight bytes than fp32;
- the embedding table (the `Gather` of a constant [V, C] matrix by the token input) is stored as float16
  (a `Gather` of the fp16 table, then a `Cast` of the one row to float32), or as
  `com.microsoft::GatherBlockQuantized` (8/4-bit, blocks along C): only one row per token is read, so this
  is for package size and fidelity, not speed;
- nothing else changes: layer/group norms, exp/decay, the WKV state update, the residual stream and every
  graph input and output (the recurrent state included) stay float32.

The rewrite reads one weight at a time (memory-mapped when the source keeps its weights as external data)
and streams the result to disk, so it needs little memory beyond the graph's structure, and it is
deterministic: the same source file and settings give a byte-identical result.
"""

from __future__ import annotations

import ast
import fnmatch
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import uses_external_data

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.names import LOGITS_OUTPUT
from rwkv_deploy.package.onnx_weights import TensorReader, subgraphs, tensor_nbytes

from .onnx_file import INLINE_WEIGHTS_MAX, inline_external_data

MS_DOMAIN = "com.microsoft"
_ALIGN = 64  # byte alignment of every tensor in the staged data file
_INLINE_MAX = 1024  # smaller untouched initializers stay inside the graph proto


class QuantizeError(RefusedError):
    """A quantization that cannot be made as asked (bits, block size, the graph's weights)."""


EMBEDDING_FP16 = 16  # QuantConfig.embedding_bits for a float16 table read by Gather + Cast
KEEP_FLOAT = 32  # override bits that leave a weight in float32


@dataclass(frozen=True)
class WeightQuant:
    """How one MatMul weight is stored: `bits`-bit integers in blocks of `block_size` K values."""

    bits: int
    block_size: int


@dataclass(frozen=True)
class QuantConfig:
    """How one precision quantizes. The defaults per precision are in QUANT_CONFIGS (see docs/export.md)."""

    bits: int  # MatMul weights: 8 or 4
    block_size: int  # K values per block (power of two >= 16)
    symmetric: bool  # symmetric: no zero points (ORT's default 2^(bits-1)); else one zero point per block
    accuracy_level: int  # MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
    head_bits: int  # bits for the head (the MatMul that produces the logits)
    embedding_bits: int | None  # 8/4: GatherBlockQuantized; 16 (EMBEDDING_FP16): an fp16 table; None: fp32
    embedding_block_size: int = 32
    head_block_size: int | None = None  # the head's blocks; None: block_size
    # (glob on the weight's role, bits, block size): e.g. ("*.ffn.*", 4, 16), or bits KEEP_FLOAT to leave the
    # weight a float32 MatMul; the role is the module path of a Linear ("model.blocks.3.ffn.key") or the
    # parameter name of a raw product ("model.blocks.3.att.w1"); the first matching override wins
    overrides: tuple[tuple[str, int, int], ...] = ()
    range_search: tuple[float, ...] = (1.0,)  # 4-bit blocks: range factors tried, least squared error wins

    def __post_init__(self) -> None:
        for bits in (self.bits, self.head_bits):
            if bits not in (4, 8):
                raise ValueError(f"bits must be 4 or 8, not {bits}")
        for pattern, bits, _ in self.overrides:
            if bits not in (4, 8, KEEP_FLOAT):
                raise ValueError(f"override {pattern!r}: bits must be 4, 8 or {KEEP_FLOAT} (float32), not {bits}")
        if self.embedding_bits not in (None, 4, 8, EMBEDDING_FP16):
            raise ValueError(f"embedding bits must be 4, 8, 16 (float16) or None, not {self.embedding_bits}")
        for block in (self.block_size, self.embedding_block_size, self.head_block_size or 16, *(o[2] for o in self.overrides)):
            if block < 16 or block & (block - 1):
                raise ValueError(f"block size must be a power of two >= 16, not {block}")

    def for_weight(self, role: str, is_head: bool) -> WeightQuant | None:
        """How to store the weight with this role; None: keep it a float32 MatMul."""
        if is_head:
            return WeightQuant(self.head_bits, self.head_block_size or self.block_size)
        for pattern, bits, block in self.overrides:
            if fnmatch.fnmatchcase(role, pattern):
                return None if bits == KEEP_FLOAT else WeightQuant(bits, block)
        return WeightQuant(self.bits, self.block_size)


# Chosen from fidelity (KL against the fp32 reference on a fixed token stream) and speed measurements at the
# RWKV-7 0.1B shape, against rwkv.cpp's Q8_0 / Q5_1 / Q4_0 (docs/bench.md, "Quantization choices").
RANGE_SEARCH = tuple(round(1.0 - 0.02 * i, 2) for i in range(16))  # 1.0, 0.98, ..., 0.70
LORA = "*.att.[wavg][12]"  # RWKV-7's low-rank factors (w1, w2, a1, ... g2): small, and sensitive at 4 bits
QUANT_CONFIGS: dict[str, QuantConfig] = {
    "int8": QuantConfig(bits=8, block_size=32, symmetric=False, accuracy_level=4, head_bits=8, head_block_size=16,
                        embedding_bits=EMBEDDING_FP16, overrides=((LORA, KEEP_FLOAT, 32),)),
    "int5": QuantConfig(bits=8, block_size=32, symmetric=False, accuracy_level=4, head_bits=8, head_block_size=16,
                        embedding_bits=EMBEDDING_FP16, overrides=(("*.ffn.value", 4, 32),), range_search=RANGE_SEARCH),
    "int4": QuantConfig(bits=4, block_size=32, symmetric=False, accuracy_level=4, head_bits=8, head_block_size=16,
                        embedding_bits=EMBEDDING_FP16, overrides=((LORA, 8, 32),), range_search=RANGE_SEARCH),
}


# -- blockwise quantization (numpy) ----------------------------------------------------------------------------


def block_quantize(x: np.ndarray, bits: int, symmetric: bool,
                   range_search: tuple[float, ...] = (1.0,)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize `x` [..., block] along its last axis: (q uint8 in [0, 2^bits - 1], scale, zero point uint8).

    Symmetric: the zero point is fixed at 2^(bits-1) and scale = max|x| / (2^(bits-1) - 1), so every value
    is representable. Asymmetric: [min(x, 0), max(x, 0)] maps onto [0, 2^bits - 1].
    Dequantized value: (q - zero_point) * scale.
    `range_search`: factors the block's range is shrunk by; each block keeps the one with the least squared
    error (clipping a rare extreme value can round the rest more finely). (1.0,): the full range only.
    """
    x = np.asarray(x, dtype=np.float32)
    best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    best_err: np.ndarray | None = None
    for factor in range_search:
        q, scale, zero = _quantize_range(x, bits, symmetric, np.float32(factor))
        if len(range_search) == 1:
            return q, scale, zero
        err = np.square((q.astype(np.float32) - zero[..., None]) * scale[..., None] - x).sum(axis=-1)
        if best is None or best_err is None:
            best, best_err = (q, scale, zero), err
            continue
        better = err < best_err
        best = (np.where(better[..., None], q, best[0]), np.where(better, scale, best[1]), np.where(better, zero, best[2]))
        best_err = np.minimum(err, best_err)
    assert best is not None
    return best


def _quantize_range(x: np.ndarray, bits: int, symmetric: bool, factor: np.float32) -> tuple[np.ndarray, ...]:
    qmax = (1 << bits) - 1
    if symmetric:
        mid = 1 << (bits - 1)
        scale = np.abs(x).max(axis=-1) * factor / np.float32(mid - 1)
        zero = np.full(scale.shape, mid, dtype=np.float32)
    else:
        lo = np.minimum(x.min(axis=-1), 0.0) * factor
        hi = np.maximum(x.max(axis=-1), 0.0) * factor
        scale = (hi - lo) / np.float32(qmax)
        safe = np.where(scale == 0, np.float32(1), scale)
        zero = np.clip(np.rint(-lo / safe), 0, qmax)
    scale = scale.astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)[..., None]
    q = np.clip(np.rint(x / safe) + zero[..., None], 0, qmax).astype(np.uint8)
    return q, scale, zero.astype(np.uint8)


def pack_low_first(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 values of `bits` bits along the last axis, the lower-indexed value in the low bits."""
    if bits == 8:
        return np.ascontiguousarray(values, dtype=np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray(values[..., 0::2] | (values[..., 1::2] << 4), dtype=np.uint8)


QUANTIZE_CHUNK_VALUES = 1 << 22  # weights quantized per pass: bounds the temporaries of the range search


def quantize_matmul_weight(w: np.ndarray, bits: int, block_size: int, symmetric: bool,
                           range_search: tuple[float, ...] = (1.0,)) -> dict[str, np.ndarray]:
    """W [K, N] -> MatMulNBits' B [N, k_blocks, block_size*bits/8], scales [N*k_blocks], zero points.

    Output rows (N) are independent, so they are quantized a few at a time: the memory beyond W itself stays
    at a few times `QUANTIZE_CHUNK_VALUES` floats whatever W's size (a 7B model's head is 1 GiB in fp32)."""
    k, n = w.shape
    k_blocks = -(-k // block_size)
    rows = max(1, QUANTIZE_CHUNK_VALUES // (k_blocks * block_size))
    parts: dict[str, list[np.ndarray]] = {"B": [], "scales": [], "zero_points": []}
    for start in range(0, n, rows):
        cols = w[:, start:start + rows]
        blocks = np.zeros((cols.shape[1], k_blocks * block_size), np.float32)
        blocks[:, :k] = cols.T
        q, scale, zero = block_quantize(blocks.reshape(-1, k_blocks, block_size), bits, symmetric, range_search)
        parts["B"].append(pack_low_first(q, bits))
        parts["scales"].append(scale)
        parts["zero_points"].append(pack_low_first(zero, bits))
    out = {"B": np.concatenate(parts["B"]), "scales": np.concatenate(parts["scales"]).reshape(-1)}
    if not symmetric:
        out["zero_points"] = np.concatenate(parts["zero_points"]).reshape(-1)
    return out


def dequantize_matmul_weight(parts: dict[str, np.ndarray], k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """Inverse of quantize_matmul_weight (for tests and measurements): W' [K, N] in float32."""
    k_blocks = -(-k // block_size)
    b = parts["B"].reshape(n, k_blocks, -1)
    q = b if bits == 8 else np.stack([b & 0xF, b >> 4], axis=-1).reshape(n, k_blocks, -1)
    if "zero_points" in parts:
        zp = parts["zero_points"].reshape(n, -1)
        zp = zp if bits == 8 else np.stack([zp & 0xF, zp >> 4], axis=-1).reshape(n, -1)
        zero = zp[:, :k_blocks].astype(np.float32)
    else:
        zero = np.full((n, k_blocks), 1 << (bits - 1), np.float32)
    w = (q.astype(np.float32) - zero[..., None]) * parts["scales"].reshape(n, k_blocks)[..., None]
    return w.reshape(n, -1)[:, :k].T.copy()


def quantize_gather_table(table: np.ndarray, bits: int, block_size: int) -> dict[str, np.ndarray]:
    """Embedding [V, C] -> GatherBlockQuantized's data (uint8, [V, C*bits/8]), scales [V, c_blocks], zero points."""
    v, c = table.shape
    c_blocks = -(-c // block_size)
    padded = np.zeros((v, c_blocks * block_size), np.float32)
    padded[:, :c] = table
    q, scale, zero = block_quantize(padded.reshape(v, c_blocks, block_size), bits, symmetric=False)
    data = pack_low_first(q.reshape(v, -1)[:, :c], bits)
    return {"data": data, "scales": scale, "zero_points": pack_low_first(zero, bits)}


# -- reading and writing tensors ---------------------------------------------------------------------------------


class _DataWriter:
    """Appends tensors to one external-data file, each at an aligned offset."""

    def __init__(self, path: Path, location: str) -> None:
        self.file = open(path, "wb")
        self.location = location
        self.offset = 0

    def add(self, name: str, data_type: int, dims: tuple[int, ...] | list[int], raw: bytes | memoryview) -> TensorProto:
        pad = -self.offset % _ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        self.file.write(raw)
        tensor = TensorProto(name=name, data_type=data_type, dims=list(dims))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(raw)
        return tensor

    def add_array(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        return self.add(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.tobytes())

    def close(self) -> None:
        self.file.close()


# -- finding what to quantize -----------------------------------------------------------------------------------

# ops between the head's MatMul and the logits output (the exporter selects the last position with a Gather)
_PASS_THROUGH = ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice")


def _head_matmul(graph: onnx.GraphProto, logits_output: str | None) -> str | None:
    """Output name of the MatMul that produces the logits (through reshapes, casts and selections only)."""
    if logits_output is None:
        outputs = [o.name for o in graph.output]
        logits_output = LOGITS_OUTPUT if LOGITS_OUTPUT in outputs else (outputs[0] if outputs else None)
    producers = {out: node for node in graph.node for out in node.output}
    name = logits_output
    while name in producers:
        node = producers[name]
        if node.op_type == "MatMul":
            return node.output[0]
        if node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def _float_matrix(tensor: TensorProto | None) -> bool:
    return tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2


# -- the rewrite ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantPlan:
    """Which initializers a graph's rewrite quantizes: MatMul weights with their storage, and the embedding."""

    matmul: dict[str, WeightQuant]  # weight name -> bits and block size (the head and overrides may differ)
    embedding: str | None  # the token-indexed Gather table, or None

    @property
    def names(self) -> set[str]:
        return set(self.matmul) | ({self.embedding} if self.embedding else set())


def weight_role(node: onnx.NodeProto, weight: str) -> str:
    """What a MatMul weight is, for QuantConfig.overrides: the parameter name when the initializer kept it
    ("model.blocks.3.att.w1"), else the module the exporter recorded the product under
    ("model.blocks.3.ffn.key", from the node's `pkg.torch.onnx.name_scopes`), else the initializer name."""
    if weight.startswith("model."):
        return weight.removesuffix(".weight")
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2:
                return scopes[-2]
    return weight


def plan_quantization(graph: onnx.GraphProto, config: QuantConfig, logits_output: str | None) -> QuantPlan:
    """Every constant 2-D float32 matrix read only as a MatMul's B (weights inside Scan/Loop/If bodies stay
    as they are), and the embedding table read by a Gather of the token ids."""
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    in_subgraphs = _subgraph_inputs(graph)
    head_output = _head_matmul(graph, logits_output)
    matmul: dict[str, WeightQuant] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and _float_matrix(initializers.get(node.input[1])):
            weight = node.input[1]
            if weight not in in_subgraphs and all(c.op_type == "MatMul" and list(c.input).index(weight) == 1
                                                  for c in consumers[weight]):
                quant = config.for_weight(weight_role(node, weight), node.output[0] == head_output)
                if quant is not None:
                    matmul[weight] = quant
    return QuantPlan(matmul, _embedding_table(graph, config, initializers, consumers, in_subgraphs))


def _embedding_table(graph: onnx.GraphProto, config: QuantConfig, initializers: dict[str, TensorProto],
                     consumers: dict[str, list[onnx.NodeProto]], in_subgraphs: set[str]) -> str | None:
    if config.embedding_bits is None:
        return None
    token_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32)}
    for node in graph.node:
        if (node.op_type == "Gather" and _float_matrix(initializers.get(node.input[0]))
                and node.input[0] not in in_subgraphs
                and not any(a.name == "axis" and a.i != 0 for a in node.attribute)
                and all(c.op_type == "Gather" and c.input[0] == node.input[0] for c in consumers[node.input[0]])
                and _depends_on(graph, node.input[1], token_inputs)):
            return node.input[0]
    return None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _summary(config: QuantConfig) -> dict[str, Any]:
    """The record of what was done (manifest `graphs.<name>.quantization`); counts are filled in as it goes."""
    return {
        "method": "weight-only blockwise (round to nearest)",
        "matmul": {"op": f"{MS_DOMAIN}::MatMulNBits", "bits": config.bits, "block_size": config.block_size,
                   "symmetric": config.symmetric, "accuracy_level": config.accuracy_level,
                   "head_bits": config.head_bits, "head_block_size": config.head_block_size or config.block_size,
                   "overrides": [list(o) for o in config.overrides], "count": 0},
        "embedding": None,
        "float32_kept": "norms, biases, decay/mix vectors, state update, graph inputs and outputs",
        "weight_bytes": {"before": 0, "after": 0},
    }


def _quantized_initializers(graph: onnx.GraphProto, plan: QuantPlan, config: QuantConfig, source: TensorReader,
                            writer: _DataWriter, summary: dict[str, Any]) -> list[TensorProto]:
    """The graph's new initializers: quantized parts for planned weights, the rest moved to `writer`'s file
    (or kept inline when small)."""
    consumers = _consumers(graph)
    new_inits: list[TensorProto] = []
    for tensor in graph.initializer:
        before = tensor_nbytes(tensor)
        summary["weight_bytes"]["before"] += before
        if tensor.name in plan.matmul:
            bits, block = plan.matmul[tensor.name].bits, plan.matmul[tensor.name].block_size
            search = config.range_search if bits == 4 else (1.0,)  # at 8 bits the full range measured best
            parts = quantize_matmul_weight(source.array(tensor), bits, block, config.symmetric, search)
            made = [writer.add_array(f"{tensor.name}.q{bits}", parts["B"]),
                    writer.add_array(f"{tensor.name}.scales", parts["scales"])]
            if "zero_points" in parts:
                made.append(writer.add_array(f"{tensor.name}.zero_points", parts["zero_points"]))
            summary["matmul"]["count"] += len(consumers[tensor.name])
        elif tensor.name == plan.embedding and config.embedding_bits == EMBEDDING_FP16:
            made = [writer.add_array(f"{tensor.name}.fp16", source.array(tensor).astype(np.float16))]
            summary["embedding"] = {"op": "Gather", "dtype": "float16"}
        elif tensor.name == plan.embedding:
            bits = config.embedding_bits
            parts = quantize_gather_table(source.array(tensor), bits, config.embedding_block_size)
            made = [writer.add_array(f"{tensor.name}.q{bits}", parts["data"]),
                    writer.add_array(f"{tensor.name}.scales", parts["scales"]),
                    writer.add_array(f"{tensor.name}.zero_points", parts["zero_points"])]
            summary["embedding"] = {"op": f"{MS_DOMAIN}::GatherBlockQuantized", "bits": bits,
                                    "block_size": config.embedding_block_size, "symmetric": False}
        elif before <= _INLINE_MAX and not uses_external_data(tensor):
            made = [tensor]
        else:
            made = [writer.add(tensor.name, tensor.data_type, tensor.dims, source.raw(tensor))]
            if tensor.HasField("doc_string"):
                made[0].doc_string = tensor.doc_string
        summary["weight_bytes"]["after"] += sum(tensor_nbytes(t) for t in made)
        new_inits.extend(made)
    return new_inits


def _quantized_nodes(graph: onnx.GraphProto, plan: QuantPlan, config: QuantConfig) -> list[onnx.NodeProto]:
    """The graph's nodes with each planned MatMul as MatMulNBits and the embedding Gather as GatherBlockQuantized."""
    dims = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in plan.matmul:
            weight, quant = node.input[1], plan.matmul[node.input[1]]
            bits = quant.bits
            k, n = dims[weight]
            inputs = [node.input[0], f"{weight}.q{bits}", f"{weight}.scales"]
            if not config.symmetric:
                inputs.append(f"{weight}.zero_points")
            attrs = {"K": k, "N": n, "bits": bits, "block_size": quant.block_size}
            if config.accuracy_level:
                attrs["accuracy_level"] = config.accuracy_level
            nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name,
                                          domain=MS_DOMAIN, **attrs))
        elif (node.op_type == "Gather" and plan.embedding is not None and node.input[0] == plan.embedding
              and config.embedding_bits == EMBEDDING_FP16):
            rows = f"{node.output[0]}.fp16"
            nodes.append(helper.make_node("Gather", [f"{plan.embedding}.fp16", node.input[1]], [rows], name=node.name,
                                          axis=0))
            nodes.append(helper.make_node("Cast", [rows], list(node.output), name=f"{node.name}.to_float32",
                                          to=TensorProto.FLOAT))
        elif node.op_type == "Gather" and plan.embedding is not None and node.input[0] == plan.embedding:
            table, bits = plan.embedding, config.embedding_bits
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [f"{table}.q{bits}", node.input[1], f"{table}.scales", f"{table}.zero_points"],
                list(node.output), name=node.name, domain=MS_DOMAIN,
                gather_axis=0, quantize_axis=1, block_size=config.embedding_block_size, bits=bits))
        else:
            nodes.append(node)
    return nodes


def _replace(field: Any, items: list) -> None:
    del field[:]
    field.extend(items)


def _load_fp32_graph(src: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise QuantizeError(f"{src}: cannot read the ONNX graph ({type(exc).__name__}: {exc})") from None
    if any(o.domain == MS_DOMAIN for o in model.opset_import):
        raise QuantizeError(f"{src}: already uses {MS_DOMAIN} operators (quantized twice?)")
    return model


def _save(model: onnx.ModelProto, staging: Path, staged_data: Path, dst: Path, data_name: str,
          location: str, external: bool | None) -> bool:
    """Write the rewritten model to `dst`: with its weights in `data_name` beside it, or (when `external` is
    false, or None and under INLINE_WEIGHTS_MAX (1 GiB)) as one self-contained file. Returns whether the weights are external."""
    if external is None:
        external = staged_data.stat().st_size + model.ByteSize() >= INLINE_WEIGHTS_MAX
    if external and location != data_name:
        _relocate(model, location, data_name)
    onnx.save(model, str(staging))
    if external:
        os.replace(staged_data, dst.with_name(data_name))
        os.replace(staging, dst)
    else:
        inline_external_data(staging, dst)
        dst.with_name(data_name).unlink(missing_ok=True)
    return external


def quantize_onnx_file(
    src: str | Path, dst: str | Path, precision: str, *, config: QuantConfig | None = None,
    external_data: bool | None = None, logits_output: str | None = LOGITS_OUTPUT,
) -> dict[str, Any]:
    """Quantize the fp32 graph `src` into `dst` and describe what was done (recorded in the manifest).

    `precision` picks QUANT_CONFIGS[precision] unless `config` is given. The result keeps its weights as
    ONNX external data (`<dst name>.data`, next to `dst`) when `external_data` is true, or, when it is None,
    from INLINE_WEIGHTS_MAX (1 GiB) of weights; otherwise `dst` is one self-contained file. The returned dict
    has "external_data" (the data file's name or None) plus the settings and counts written to the
    manifest's `graphs.<name>.quantization`.
    """
    src, dst = Path(src), Path(dst)
    if config is None:
        if precision not in QUANT_CONFIGS:
            raise QuantizeError(f"no quantization for precision {precision!r} (known: {', '.join(QUANT_CONFIGS)})")
        config = QUANT_CONFIGS[precision]
    model = _load_fp32_graph(src)
    graph = model.graph
    plan = plan_quantization(graph, config, logits_output)
    staging = dst.with_name(f".quantizing-{dst.name}")
    data_name = f"{dst.name}.data"
    staged_data = staging.with_name(staging.name + ".data")
    writer = _DataWriter(staged_data, data_name if external_data else staged_data.name)
    summary = _summary(config)
    try:
        with TensorReader(src.parent) as source:
            initializers = _quantized_initializers(graph, plan, config, source, writer, summary)
        writer.close()
        _replace(graph.node, _quantized_nodes(graph, plan, config))
        _replace(graph.initializer, initializers)
        _replace(graph.input, [v for v in graph.input if v.name not in plan.names])
        _replace(graph.value_info, [v for v in graph.value_info if v.name not in plan.names])
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        external = _save(model, staging, staged_data, dst, data_name, writer.location, external_data)
    finally:
        writer.close()
        staging.unlink(missing_ok=True)
        staged_data.unlink(missing_ok=True)
    summary["external_data"] = data_name if external else None
    return summary


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every value name read by a node inside a control-flow body (at any depth)."""
    bodies = list(subgraphs(graph))[1:]
    return {name for body in bodies for node in body.node for name in node.input}


def _relocate(model: onnx.ModelProto, old: str, new: str) -> None:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new


def _depends_on(graph: onnx.GraphProto, name: str, sources: set[str]) -> bool:
    """Whether the value `name` is computed from one of the graph inputs `sources` (the token ids)."""
    producers = {out: node for node in graph.node for out in node.output}
    pending, seen = [name], set()
    while pending:
        current = pending.pop()
        if current in sources:
            return True
        if current in seen or current not in producers:
            continue
        seen.add(current)
        pending.extend(producers[current].input)
    return False


def manifest_record(summary: dict[str, Any]) -> dict[str, Any]:
    """What goes into GraphInfo.quantization: the summary without the file layout."""
    return {k: v for k, v in summary.items() if k != "external_data"}


def quantize_staged_graph(
    staged: Path, final: Path, precision: str, external_data: bool | None,
    check: Callable[[Path], None] | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """Package-builder step: quantize the traced fp32 graph `staged` into `final`, then delete `staged`
    (and its external data). Returns (external-data file name or None, the manifest's quantization record)."""
    try:
        summary = quantize_onnx_file(staged, final, precision, external_data=external_data)
    finally:
        model_files = [staged, staged.with_name(staged.name + ".data")]
        for path in model_files:
            path.unlink(missing_ok=True)
    if check is not None:
        check(final)
    return summary["external_data"], manifest_record(summary)


def config_for(precision: str, **overrides: Any) -> QuantConfig:
    """QUANT_CONFIGS[precision] with some fields replaced (for measurements)."""
    return replace(QUANT_CONFIGS[precision], **overrides)

