"""`rwkv-deploy check-trt`: will TensorRT's ONNX parser and builder take this package's graphs, and build
them as rwkv-deploy's numerics policy requires?

The graphs are read statically (without their weights: `load_external_data=False`, so linting a multi-GB
package costs only its structure) against what the parser accepts (`op_table`) and what a strongly typed
build does with it (precision comes from the graph, so an fp16 normalisation in the graph *is* fp16 in the
engine). Every finding names the node (or tensor) and the fix, at one of four levels:

- `error`: TensorRT's parser or builder will fail. These verdicts are calibrated against the real parser and
  builder of TensorRT for RTX: `tests/targets/tensorrt/lint_corpus.py` builds a small graph for every rule and
  the test requires that a graph gets an error exactly when the real parse+build fails.
- `policy`: TensorRT accepts it, but it breaks rwkv-deploy's numerics policy (recurrent state, norms in fp32)
  or its runtime contract (numpy-exchangeable I/O, profiles only for batch and T). Fails the command too.
- `warning`: builds and runs, with a caveat. `info`: notes.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.package.names import STATE_INPUT_PREFIX, STATE_OUTPUT_PREFIX, STEP_GRAPH, TIME_AXIS
from rwkv_deploy.tensorrt_library import FLAVOUR_NAMES, TENSORRT, TENSORRT_RTX

from .op_table import (CONSTANT_INPUTS, OPSET_MAX, OPSET_MIN, RTX_EXTRA, RTX_UNSUPPORTED, SINGLE_OUTPUT_OPS,
                       SUPPORTED_OPS, TYPED_INPUT)

LEVELS = ("error", "policy", "warning", "info")
FAILING_LEVELS = ("error", "policy")
FLAVOURS = (TENSORRT, TENSORRT_RTX)  # the import names of NVIDIA TensorRT and TensorRT for RTX
PROTOBUF_LIMIT = 2**31 - 1  # the parser reads protobuf with SetTotalBytesLimit(INT_MAX)
DEFAULT_DOMAINS = ("", "ai.onnx")
ORT_DOMAIN = "com.microsoft"
ORT_QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized", "MatMulBnb4", "DequantizeBlockwise")  # export/quantize.py
TURING = "7.5"  # RTX compiles no fp32 GEMM and no bf16 for this target

_TRT_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8", TensorProto.INT8: "INT8", TensorProto.INT4: "INT4",
    TensorProto.FLOAT4E2M1: "FP4", TensorProto.DOUBLE: "DOUBLE",
    **{getattr(TensorProto, n): "FP8" for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")},
}
_QDQ_ONLY = ("FP8", "FP4", "INT4")  # the builder refuses them unless made by Q/DQ (INT8 is fine: measured)
_IO_TYPES = ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "UINT8", "INT8")
_LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
            "BatchNormalization", "LpNormalization", "MeanVarianceNormalization")
NORM_LIKE_REDUCTIONS = ("ReduceMean", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")
FRAGILE_ELEMENTWISE = ("Exp", "Softplus", "Log")
GEMM_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Rule:
    """One check: its level and what it predicts (`parser`/`builder`: TensorRT fails; `policy`: ours)."""

    check: str
    level: str
    basis: str
    summary: str


RULES: dict[str, Rule] = {r.check: r for r in (
    Rule("opset", "warning", "note", "opset outside 9..24, the range the parser documents (RTX parsed 8 and 28)"),
    Rule("ort-quantized-op", "error", "parser", "ONNX Runtime's weight-only int8/int4 ops (GatherBlockQuantized: "
         "no importer; MatMulNBits: fp16 only, and a plugin the wheels lack)"),
    Rule("custom-op", "error", "parser", "an op outside the ONNX domain (no plugin)"),
    Rule("unsupported-op", "error", "parser", "an op the parser has no importer for"),
    Rule("op-dtype", "error", "parser", "an op fed a type the parser rejects for it"),
    Rule("op-restriction", "error", "parser", "a used second output of LayerNormalization/MaxPool"),
    Rule("constant-input", "error", "parser", "axes/depth/mode that must be known at build time but are not"),
    Rule("io-dtype", "error", "parser", "graph I/O of a type TensorRT has no binding for (DOUBLE: warning, "
         "the engine binds it as FP32)"),
    Rule("unsupported-dtype", "error", "parser", "UINT8 inside the graph (outside Q/DQ), or a type with no "
         "TensorRT equivalent"),
    Rule("quantized-dtype", "error", "builder", "FP8/FP4/INT4 tensors not made by Q/DQ"),
    Rule("target-gemm", "error", "builder", "an fp32 MatMul/Gemm built for compute capability 7.5 (RTX)"),
    Rule("target-bf16", "error", "builder", "bf16 tensors built for compute capability 7.5 (RTX)"),
    Rule("external-data", "error", "parser", "external weights missing or outside the graph's folder"),
    Rule("file-size", "error", "parser", "a .onnx of 2 GiB or more (protobuf's limit)"),
    Rule("bf16-io", "policy", "policy", "bf16 graph I/O: numpy (the runtimes' host side) has no bfloat16"),
    Rule("dynamic-dims", "policy", "policy", "an input dim that varies but is neither batch nor the prefill T "
         "(build-engine gives ranges to those two only)"),
    Rule("state-dtype", "policy", "policy", "state I/O not fp32"),
    Rule("fp16-state", "policy", "policy", "the recurrent state cast to fp16, or computed in it"),
    Rule("fp16-norm", "policy", "policy", "a normalisation fed fp16/bf16 (stash_type is ignored when strongly typed)"),
    Rule("fp16-reduction", "warning", "policy", "ReduceMean/L2/SumSquare/LogSumExp on fp16"),
    Rule("fp16-decay", "warning", "policy", "Exp/Softplus/Log on fp16"),
    Rule("double", "warning", "note", "DOUBLE tensors (cast to FP32 with clamping)"),
    Rule("bf16", "warning", "note", "bf16 tensors (compute capability 8.0+)"),
    Rule("batch-dim", "warning", "note", "inputs/outputs name their batch dim differently"),
    Rule("io-name-clash", "warning", "note", "an output named like an input: the parser renames the INPUT"),
    Rule("int64", "info", "note", "INT64 I/O and shape tensors stay INT64"),
    Rule("precision", "info", "note", "how many fp16/bf16 tensors the engine will compute in"),
)}


class LintError(RefusedError):
    """The graph could not be read at all (not a lint finding: there is nothing to lint)."""


@dataclass(frozen=True)
class Finding:
    """One problem or note: `node` is the node's name (or the tensor's, for graph inputs and files)."""

    level: str
    check: str
    node: str
    op: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class LintReport:
    """The findings of one graph (`name`: the manifest's graph name, e.g. step or prefill)."""

    graph: str
    opset: int
    node_count: int
    findings: tuple[Finding, ...]
    name: str = STEP_GRAPH

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        """The findings that fail the command: TensorRT errors and policy violations."""
        return [f for f in self.findings if f.level in FAILING_LEVELS]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "graph": self.graph, "opset": self.opset, "nodes": self.node_count,
                **{key: self.count(level) for key, level in (("errors", "error"), ("policy", "policy"),
                                                           ("warnings", "warning"), ("notes", "info"))},
                "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class PackageLintReport:
    """check-trt's verdict on a package: one report per graph, for one TensorRT flavour and build targets."""

    flavour: str
    targets: tuple[str, ...]
    graphs: tuple[LintReport, ...]

    @property
    def errors(self) -> list[Finding]:
        return [f for g in self.graphs for f in g.errors]

    def count(self, level: str) -> int:
        return sum(g.count(level) for g in self.graphs)

    def to_dict(self) -> dict[str, Any]:
        return {"flavour": self.flavour, "targets": list(self.targets),
                "errors": self.count("error"), "policy": self.count("policy"), "warnings": self.count("warning"),
                "notes": self.count("info"), "graphs": [g.to_dict() for g in self.graphs]}


# -- the indexed graph ---------------------------------------------------------------------------------


class _Graph:
    """The model with types inferred and the lookups every check needs, built once; `flavour` and `targets`
    are what the engine will be built with."""

    def __init__(self, model: onnx.ModelProto, flavour: str = TENSORRT_RTX, targets: Sequence[str] = ()) -> None:
        self.model = model
        self.flavour = flavour
        self.targets = tuple(targets)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
        except Exception:  # inference is best effort: a lint must still report what it can
            inferred = model
        graph = inferred.graph
        self.graph = graph
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = [v for v in graph.input if v.name not in self.initializers]
        self.outputs = list(graph.output)
        self.dtypes: dict[str, int] = {}
        for value in [*graph.value_info, *graph.input, *graph.output]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                self.dtypes[value.name] = value.type.tensor_type.elem_type
        self.dtypes.update({name: t.data_type for name, t in self.initializers.items()})
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = set(self.initializers)  # initializers and Constant outputs, through Cast/Identity
        for node in graph.node:  # in topological order, so chains of constants resolve
            if node.op_type == "Constant" or (node.op_type in ("Identity", "Cast") and node.input
                                              and node.input[0] in self.constants):
                self.constants.update(node.output)
        self.supported_ops = dict(SUPPORTED_OPS)
        if flavour == TENSORRT_RTX:
            self.supported_ops.update(RTX_EXTRA)
            for op in RTX_UNSUPPORTED:
                self.supported_ops.pop(op, None)

    def all_nodes(self) -> Iterator[onnx.NodeProto]:
        """Every node: the main graph, control-flow bodies and local functions."""
        pending = deque([*self.graph.node, *(n for f in self.model.functions for n in f.node)])
        while pending:
            node = pending.popleft()
            yield node
            for attr in node.attribute:
                pending.extend(n for g in [attr.g, *attr.graphs] for n in g.node)

    def dtype(self, name: str) -> int | None:
        return self.dtypes.get(name)

    def is_low_precision(self, name: str) -> bool:
        return self.dtypes.get(name) in _LOW_PRECISION

    def input_feeding(self, name: str) -> str | None:
        """The graph input whose *values* `name` is computed from, or None (constants and tensor shapes only:
        Shape and Size read a tensor's shape, not its values)."""
        inputs = {v.name for v in self.inputs}
        pending, seen = [name], set()
        while pending:
            current = pending.pop()
            if current in seen or current in self.constants or not current:
                continue
            seen.add(current)
            if current in inputs:
                return current
            producer = self.producers.get(current)
            if producer is not None and producer.op_type not in ("Shape", "Size"):
                pending.extend(producer.input)
        return None


def label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


def type_name(elem_type: int) -> str:
    return _TRT_TYPE_NAMES.get(elem_type, TensorProto.DataType.Name(elem_type))


def _at(level: str, check: str, node: onnx.NodeProto, message: str, fix: str) -> Finding:
    return Finding(level, check, label(node), node.op_type, message, fix)


# -- the checks ------------------------------------------------------------------------------------


def _check_opset(g: _Graph) -> Iterator[Finding]:
    if not OPSET_MIN <= g.opset <= OPSET_MAX:
        yield Finding("warning", "opset", "graph", "-", f"opset {g.opset} is outside {OPSET_MIN}..{OPSET_MAX}, the "
                      "range TensorRT's parser documents (TensorRT 10.15)", "re-export with --opset 18")


def _check_ops(g: _Graph) -> Iterator[Finding]:
    for node in g.all_nodes():
        if node.domain == ORT_DOMAIN and node.op_type in ORT_QUANTIZED_OPS:
            yield _at("error", "ort-quantized-op", node, f"{node.domain}::{node.op_type} is an ONNX Runtime contrib op "
                      "(rwkv-deploy's weight-only int8/int4 export); TensorRT's ONNX parser cannot import it",
                      "for TensorRT export with --precision fp16 (or fp32); int8/int4 packages are for ONNX Runtime")
        elif node.domain not in DEFAULT_DOMAINS:
            yield _at("error", "custom-op", node, f"op {node.domain}::{node.op_type} is outside the ONNX domain",
                      "re-export without custom ops, or build with a TensorRT plugin that implements it")
        elif node.op_type not in g.supported_ops:
            yield _at("error", "unsupported-op", node, f"{node.op_type} is not supported by the ONNX parser of "
                      f"{_flavour_name(g.flavour)}", "re-export so that it is expressed with supported ops")
        else:
            yield from _check_op_type(g, node)
            if node.op_type in SINGLE_OUTPUT_OPS and any(
                    name and (g.consumers.get(name) or name in {o.name for o in g.outputs}) for name in node.output[1:]):
                yield _at("error", "op-restriction", node, f"{node.op_type}: only the first output is supported",
                          "use only the first output (compute any statistics separately)")
            if node.op_type in GEMM_OPS and TURING in g.targets and g.dtype(node.input[0]) == TensorProto.FLOAT:
                yield _at("error", "target-gemm", node, f"an fp32 {node.op_type} cannot be compiled for compute "
                          f"capability {TURING} (RTX: 'FP32 GEMM is not supported' on Turing)",
                          "build for 8.0+ only, or use an fp16 package for Turing")


def _flavour_name(flavour: str) -> str:
    return FLAVOUR_NAMES[flavour]


def _check_op_type(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    index = TYPED_INPUT.get(node.op_type, 0)
    names = node.output if index is None else node.input
    position = 0 if index is None else index
    if position >= len(names) or not names[position]:
        return
    dtype = g.dtype(names[position])
    if dtype is None:
        return
    allowed = g.supported_ops[node.op_type]
    name = type_name(dtype)
    if name not in allowed and name not in (*_QDQ_ONLY, "INT8", "UINT8", "DOUBLE"):  # those: _check_dtypes
        yield _at("error", "op-dtype", node, f"{node.op_type} on {name} (TensorRT supports {', '.join(allowed)})",
                  f"cast to one of {', '.join(allowed)} before this node")


def _check_constant_inputs(g: _Graph) -> Iterator[Finding]:
    rules = defaultdict(list)
    for op, index, since, what, kind in CONSTANT_INPUTS:
        rules[op].append((index, since, what, kind))
    for node in g.graph.node:
        for index, since, what, kind in rules.get(node.op_type, ()):
            if g.opset < since or len(node.input) <= index or not node.input[index]:
                continue
            name = node.input[index]
            if kind == "weights" and name not in g.constants:
                yield _at("error", "constant-input", node, f"{what} (input {index}, {name!r}) is computed, not an "
                          "initializer or Constant; TensorRT's parser needs its value as weights",
                          f"make {what} an initializer or a Constant node")
            elif kind == "shape" and (source := g.input_feeding(name)) is not None:
                yield _at("error", "constant-input", node, f"{what} (input {index}, {name!r}) depends on the values "
                          f"of graph input {source!r}; TensorRT needs it at build time (computed from constants "
                          "and tensor shapes is fine)", f"compute {what} from constants or shapes only")


def _check_dtypes(g: _Graph) -> Iterator[Finding]:
    io = {v.name for v in [*g.inputs, *g.outputs]}
    inputs = {v.name for v in g.inputs}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name, elem_type in g.dtypes.items():
        kind = type_name(elem_type)
        if name in io:
            if kind == "INT64" and name in inputs:
                yield Finding("info", "int64", name, "graph input", f"input {name!r} is INT64: TensorRT >= 9 binds "
                              "it as INT64 (no cast to INT32)", "nothing to do: the TensorRT backend binds an int64 buffer")
            elif kind == "BF16":
                yield Finding("policy", "bf16-io", name, "graph I/O", f"{name!r} is BF16: TensorRT accepts it, but "
                              "numpy (the runtimes' host side) has no bfloat16", "keep graph inputs and outputs fp32 "
                              "(int64 for tokens)")
            elif kind == "DOUBLE":
                yield Finding("warning", "io-dtype", name, "graph I/O", f"{name!r} is DOUBLE: the engine binds it as "
                              "FP32 (the parser casts it), so callers must pass float32", "export the I/O as float32")
            elif kind not in _IO_TYPES:
                yield Finding("error", "io-dtype", name, "graph I/O", f"{name!r} is {kind}, which TensorRT cannot "
                              "bind", "export graph inputs and outputs as FP32, FP16, INT32, INT64, BOOL or UINT8")
            continue
        by_kind[kind].append(name)
    yield from _internal_dtype_findings(g, by_kind)


def _internal_dtype_findings(g: _Graph, by_kind: dict[str, list[str]]) -> Iterator[Finding]:
    """One finding per kind of questionable internal tensor, located at the first node that makes one."""
    def where(names: list[str]) -> tuple[str, str, str]:
        node = g.producers.get(names[0])
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return (label(node) if node else names[0]), (node.op_type if node else "initializer"), f"{names[0]!r}{more}"

    if names := by_kind.get("INT64"):
        node, op, what = where(names)
        yield Finding("info", "int64", node, op, f"{len(names)} INT64 tensors ({what}: shapes, axes, indices) "
                      "stay INT64 in TensorRT >= 9", "nothing to do")
    if names := by_kind.get("DOUBLE"):
        node, op, what = where(names)
        yield Finding("warning", "double", node, op, f"DOUBLE tensors ({what}): TensorRT casts them to FP32, "
                      "clamping to +-FLT_MAX", "export in float32")
    if names := by_kind.get("BF16"):
        node, op, what = where(names)
        if TURING in g.targets:
            yield Finding("error", "target-bf16", node, op, f"BF16 tensors ({what}) cannot be compiled for compute "
                          f"capability {TURING} (RTX: 'HW-specific datatypes: b16')", "drop 7.5 from the targets")
        else:
            yield Finding("warning", "bf16", node, op, f"BF16 tensors ({what}): supported only on GPUs of compute "
                          "capability 8.0+, and the ONNX Runtime CPU reference cannot check most bf16 kernels",
                          "export with --precision fp16 unless every target GPU is Ampere+")
    for kind in _QDQ_ONLY:
        bad = [n for n in by_kind.get(kind, []) if not _in_qdq(g, n)]
        if bad:
            node, op, what = where(bad)
            yield Finding("error", "quantized-dtype", node, op, f"{kind} tensors outside Q/DQ ({what}): the builder "
                          "accepts them only from QuantizeLinear (or as constants)",
                          "express quantization with QuantizeLinear/DequantizeLinear pairs")
    if bad := [n for n in by_kind.get("UINT8", []) if not _in_qdq(g, n)]:
        node, op, what = where(bad)
        yield Finding("error", "unsupported-dtype", node, op, f"UINT8 tensors ({what}): TensorRT allows UINT8 only "
                      "at graph inputs/outputs and between Q/DQ", "cast to INT32 or a float type instead")
    known = {"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "DOUBLE", "INT8", "UINT8", *_QDQ_ONLY}
    for kind, names in sorted(by_kind.items()):
        if kind not in known:
            node, op, what = where(names)
            yield Finding("error", "unsupported-dtype", node, op, f"{kind} tensors ({what}): no TensorRT type",
                          "cast to a supported type (FP32, FP16, INT32, INT64, BOOL)")


def _in_qdq(g: _Graph, name: str) -> bool:
    """Made by QuantizeLinear, or an initializer/constant read only by DequantizeLinear."""
    producer = g.producers.get(name)
    if producer is not None and producer.op_type != "Constant":
        return producer.op_type == "QuantizeLinear"
    readers = g.consumers.get(name, [])
    return bool(readers) and all(n.op_type == "DequantizeLinear" for n in readers)


def _check_io_shapes(g: _Graph) -> Iterator[Finding]:
    batch_names = set()
    for kind, values in (("input", g.inputs), ("output", g.outputs)):
        for value in values:
            if not value.type.tensor_type.HasField("shape"):
                if kind == "input":
                    yield Finding("policy", "dynamic-dims", value.name, "graph input", f"input {value.name!r} has no "
                                  "known rank: build-engine cannot give it an optimization profile",
                                  "export with a static rank and fixed sizes for every dim but batch (and T)")
                continue
            dims = value.type.tensor_type.shape.dim
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value"):
                    continue
                if axis == 0:
                    batch_names.add(dim.dim_param or "?")
                elif kind == "input" and dim.dim_param != TIME_AXIS:
                    yield Finding("policy", "dynamic-dims", value.name, "graph input", f"dim {axis} of input "
                                  f"{value.name!r} is dynamic ({dim.dim_param or 'unnamed'}); build-engine gives "
                                  f"optimization-profile ranges only to the batch dim and the prefill's {TIME_AXIS}",
                                  "export with fixed sizes for every other dim")
    if len(batch_names) > 1:
        yield Finding("warning", "batch-dim", "graph", "-", f"inputs/outputs name their batch dim differently "
                      f"({', '.join(sorted(batch_names))}); every profile gives all inputs one batch range",
                      "export with one shared batch dim")
    for name in {v.name for v in g.inputs} & {v.name for v in g.outputs}:
        yield Finding("warning", "io-name-clash", name, "graph I/O", f"{name!r} is both an input and an output; "
                      f"TensorRT's parser renames the input to '__{name}' (the output keeps {name!r}), so the engine "
                      "no longer matches the graph's input names", "give the output its own name")


def _check_file(g: _Graph, graph_path: Path | None) -> Iterator[Finding]:
    if graph_path is None:
        return
    size = graph_path.stat().st_size
    if size >= PROTOBUF_LIMIT:
        yield Finding("error", "file-size", graph_path.name, "file", f"{graph_path.name} is {size / 2**30:.2f} GiB; "
                      "protobuf (and so TensorRT's parser) cannot read a file of 2 GiB or more",
                      "re-export with --external-data so the weights go to a separate file")
    locations = {entry.value for t in g.initializers.values()
                 if t.data_location == TensorProto.EXTERNAL for entry in t.external_data if entry.key == "location"}
    for location in sorted(locations):
        data = graph_path.parent / location
        if os.path.isabs(location) or ".." in Path(location).parts:
            yield Finding("error", "external-data", location, "file", f"external data location {location!r} "
                          "is absolute or leaves the graph's folder ('..'); TensorRT's parser fails to import it",
                          "keep the .data file next to the .onnx and store a plain file name")
        elif not data.is_file():
            yield Finding("error", "external-data", location, "file", f"external data file {location!r} is missing",
                          "copy the package again, or re-export it")
        else:
            yield Finding("info", "external-data", location, "file", f"weights are in {location} "
                          f"({data.stat().st_size / 2**20:.1f} MiB); build-engine parses the graph by path "
                          "(parse_from_file), so TensorRT finds them", "nothing to do: keep it next to the .onnx")


def _check_precision(g: _Graph, state: Sequence[tuple[str, str]]) -> Iterator[Finding]:
    """fp32 islands: norms, their reductions, exp/decay and the recurrent state must not run in fp16.
    TensorRT builds all of these; they are rwkv-deploy's numerics policy (`policy` fails the command)."""
    for node in g.graph.node:
        if not node.input or not g.is_low_precision(node.input[0]):
            continue
        low = type_name(g.dtype(node.input[0]))
        if node.op_type in NORM_OPS:
            yield _at("policy", "fp16-norm", node, f"{node.op_type} is fed {low}: a strongly typed build normalises "
                      "in the input's precision (stash_type is ignored), which overflows/loses precision",
                      "Cast the input to float32 before the normalisation (rwkv-deploy's fp16 export keeps norms fp32)")
        elif node.op_type in NORM_LIKE_REDUCTIONS:
            yield _at("warning", "fp16-reduction", node, f"{node.op_type} on {low}: normalisation-like reductions "
                      "overflow in fp16 (e.g. ReduceL2 -> Div)", "Cast the input to float32 first")
        elif node.op_type in FRAGILE_ELEMENTWISE:
            yield _at("warning", "fp16-decay", node, f"{node.op_type} on {low}: exp/log decay terms of the WKV "
                      "update are numerically fragile in fp16", "compute the decay chain in float32")
    for state_in, state_out in state:
        for name in (state_in, state_out):
            dtype = g.dtype(name)
            if dtype is not None and dtype != TensorProto.FLOAT:
                yield Finding("policy", "state-dtype", name, "graph I/O", f"state tensor {name!r} is "
                              f"{type_name(dtype)}; the recurrent state must stay fp32", "export the state as float32")
        for reader in g.consumers.get(state_in, []):
            if reader.op_type == "Cast" and _cast_target(reader) in _LOW_PRECISION:
                yield _at("policy", "fp16-state", reader, f"state {state_in!r} is cast to "
                          f"{type_name(_cast_target(reader))}: the state update would run in low precision",
                          "keep the WKV state update in float32")
        producer = g.producers.get(state_out)
        if producer is not None and producer.op_type == "Cast" and g.is_low_precision(producer.input[0]):
            yield _at("policy", "fp16-state", producer, f"new state {state_out!r} is computed in "
                      f"{type_name(g.dtype(producer.input[0]))} and cast up", "keep the WKV state update in float32")


def _cast_target(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _precision_note(g: _Graph) -> Iterator[Finding]:
    counts = defaultdict(int)
    for elem_type in g.dtypes.values():
        counts[type_name(elem_type)] += 1
    low = {k: v for k, v in counts.items() if k in ("FP16", "BF16")}
    summary = ", ".join(f"{v} {k} tensors" for k, v in sorted(low.items())) if low else "no fp16/bf16 tensors"
    yield Finding("info", "precision", "graph", "-", f"{summary}; a strongly typed engine computes every tensor "
                  "in exactly the graph's type (no builder precision flags)", "nothing to do")


# -- entry points ----------------------------------------------------------------------------------


def state_pairs_from_names(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(state input, state output) by the package naming convention `state_in.X` / `state_out.X`."""
    outputs = {o.name for o in model.graph.output}
    return [(i.name, STATE_OUTPUT_PREFIX + i.name[len(STATE_INPUT_PREFIX):]) for i in model.graph.input
            if i.name.startswith(STATE_INPUT_PREFIX) and STATE_OUTPUT_PREFIX + i.name[len(STATE_INPUT_PREFIX):] in outputs]


def lint_model(model: onnx.ModelProto, graph_path: Path | None = None,
               state: Sequence[tuple[str, str]] | None = None, *, flavour: str = TENSORRT_RTX,
               targets: Sequence[str] = ()) -> list[Finding]:
    """Every finding for `model` (loaded without external data), most severe first. `flavour` is the
    TensorRT the engine will be built with, `targets` its compute capabilities ("8.6", ...; () = default)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown TensorRT flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    g = _Graph(model, flavour, targets)
    pairs = state_pairs_from_names(model) if state is None else state
    findings = [*_check_opset(g), *_check_ops(g), *_check_constant_inputs(g), *_check_dtypes(g),
                *_check_io_shapes(g), *_check_file(g, graph_path), *_check_precision(g, pairs), *_precision_note(g)]
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def lint_graph_file(graph_path: Path, state: Sequence[tuple[str, str]] | None = None, *, name: str = STEP_GRAPH,
                    flavour: str = TENSORRT_RTX, targets: Sequence[str] = ()) -> LintReport:
    """Lint the graph at `graph_path` (read without its weights)."""
    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, ...
        raise LintError(f"{graph_path}: cannot read the ONNX graph ({type(exc).__name__}: {exc})") from None
    findings = lint_model(model, graph_path, state, flavour=flavour, targets=targets)
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    return LintReport(str(graph_path), opset, len(model.graph.node), tuple(findings), name)


def lint_package(package_dir: str | Path, graphs: Sequence[str] | None = None, *, flavour: str = TENSORRT_RTX,
                 targets: Sequence[str] = ()) -> PackageLintReport:
    """Lint every graph of the package in `package_dir` (or the named ones), in manifest order."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    state = [(s.input, s.output) for s in manifest.state]
    names = list(manifest.graphs) if graphs is None else list(graphs)
    reports = tuple(lint_graph_file(package_dir / manifest.graphs[n].path, state, name=n, flavour=flavour,
                                    targets=targets) for n in names)
    return PackageLintReport(flavour, tuple(targets), reports)


def format_report(report: PackageLintReport) -> str:
    """Human-readable report: per graph one block per finding, then a verdict line."""
    lines = []
    for graph in report.graphs:
        lines.append(f"{graph.name}: {graph.graph}: opset {graph.opset}, {graph.node_count} nodes")
        for f in graph.findings:
            lines.append(f"{f.level.upper():<8}{f.node} ({f.op}): {f.message}")
            lines.append(f"{'':<8}fix: {f.fix}")
    errors, policy, warnings, notes = (report.count(level) for level in LEVELS)
    targets = ", ".join(report.targets) if report.targets else "its default targets"
    if errors:
        verdict = f"{_flavour_name(report.flavour)}'s parser or builder will reject this package ({targets})"
    elif policy:
        verdict = "TensorRT would build it, but it breaks rwkv-deploy's numerics/runtime policy"
    else:
        verdict = f"ready for `rwkv-deploy build-engine` ({_flavour_name(report.flavour)}, {targets})"
    lines.append(f"{errors} errors, {policy} policy, {warnings} warnings, {notes} notes: {verdict}")
    return "\n".join(lines)
