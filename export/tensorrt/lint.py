"""`rwkv-deploy check-trt`: will TensorRT's ONNX parser take this package's graph, and build it as intended?

TensorRT cannot run here, so this reads the graph statically against what onnx-tensorrt documents
(`op_table`) and what a strongly typed build does with it (TensorRT 11 is always strongly typed:
precision comes from the graph, so an fp16 normalisation or state update in the graph *is* fp16 in the
engine). Every finding names the node (or tensor) and the fix. The graph is read without its weights
(`load_external_data=False`), so linting a multi-GB package costs only the graph's structure.
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

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import read_manifest
from rwkv_deploy.package.names import STATE_INPUT_PREFIX, STATE_OUTPUT_PREFIX, STEP_GRAPH

from .op_table import CONSTANT_INPUTS, OPSET_MAX, OPSET_MIN, SINGLE_OUTPUT_OPS, SUPPORTED_OPS, TYPED_INPUT

LEVELS = ("error", "warning", "info")
PROTOBUF_LIMIT = 2**31 - 1  # the parser reads protobuf with SetTotalBytesLimit(INT_MAX)
DEFAULT_DOMAINS = ("", "ai.onnx")
ORT_DOMAIN = "com.microsoft"
ORT_QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized", "MatMulBnb4", "DequantizeBlockwise")  # export/quantize.py

_TRT_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8", TensorProto.INT8: "INT8", TensorProto.INT4: "INT4",
    TensorProto.FLOAT4E2M1: "FP4", TensorProto.DOUBLE: "DOUBLE",
    **{getattr(TensorProto, n): "FP8" for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")},
}
_QUANTIZED = ("INT8", "FP8", "FP4", "INT4")  # reachable only through Q/DQ
_LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
            "BatchNormalization", "LpNormalization", "MeanVarianceNormalization")
NORM_LIKE_REDUCTIONS = ("ReduceMean", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")
FRAGILE_ELEMENTWISE = ("Exp", "Softplus", "Log")


class LintError(RwkvDeployError):
    """The graph could not be read at all (not a lint finding: there is nothing to lint)."""

    exit_code = 2


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
    graph: str
    opset: int
    node_count: int
    findings: tuple[Finding, ...]

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "opset": self.opset, "nodes": self.node_count,
                "errors": self.count("error"), "warnings": self.count("warning"), "notes": self.count("info"),
                "findings": [f.to_dict() for f in self.findings]}


# -- the indexed graph ---------------------------------------------------------------------------------


class _Graph:
    """The model with types inferred and the lookups every check needs, built once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
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
        self.constants = set(self.initializers)
        for node in graph.node:  # in topological order, so chains of constants resolve
            if node.op_type == "Constant" or (node.op_type in ("Identity", "Cast") and node.input
                                              and node.input[0] in self.constants):
                self.constants.update(node.output)

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


def label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


def type_name(elem_type: int) -> str:
    return _TRT_TYPE_NAMES.get(elem_type, TensorProto.DataType.Name(elem_type))


def _at(level: str, check: str, node: onnx.NodeProto, message: str, fix: str) -> Finding:
    return Finding(level, check, label(node), node.op_type, message, fix)


# -- the checks ------------------------------------------------------------------------------------


def _check_opset(g: _Graph) -> Iterator[Finding]:
    where = "graph"
    if g.opset < OPSET_MIN:
        yield Finding("error", "opset", where, "-", f"opset {g.opset} is below TensorRT's minimum {OPSET_MIN}",
                      "re-export with --opset 18")
    elif g.opset > OPSET_MAX:
        yield Finding("warning", "opset", where, "-",
                      f"opset {g.opset} is above {OPSET_MAX}, the newest the published parser matrix "
                      "(TensorRT 10.15) covers", "re-export with --opset 18 unless your TensorRT documents it")


def _check_ops(g: _Graph) -> Iterator[Finding]:
    for node in g.all_nodes():
        if node.domain == ORT_DOMAIN and node.op_type in ORT_QUANTIZED_OPS:
            yield _at("error", "ort-quantized-op", node, f"{node.domain}::{node.op_type} is an ONNX Runtime contrib op "
                      "(rwkv-deploy's weight-only int8/int4 export); TensorRT's ONNX parser does not implement it",
                      "for TensorRT export with --precision fp16 (or fp32); int8/int4 packages are for ONNX Runtime")
        elif node.domain not in DEFAULT_DOMAINS:
            yield _at("error", "custom-op", node, f"op {node.domain}::{node.op_type} is outside the ONNX domain",
                      "re-export without custom ops, or build with a TensorRT plugin that implements it")
        elif node.op_type not in SUPPORTED_OPS:
            yield _at("error", "unsupported-op", node, f"{node.op_type} is not supported by TensorRT's ONNX parser",
                      "re-export so that it is expressed with supported ops (see docs/tensorrt.md)")
        else:
            yield from _check_op_type(g, node)
            if node.op_type in SINGLE_OUTPUT_OPS and any(
                    name and (g.consumers.get(name) or name in {o.name for o in g.outputs}) for name in node.output[1:]):
                yield _at("error", "op-restriction", node, f"{node.op_type}: only the first output is supported",
                          "use only the first output (compute any statistics separately)")


def _check_op_type(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    index = TYPED_INPUT.get(node.op_type, 0)
    names = node.output if index is None else node.input
    position = 0 if index is None else index
    if position >= len(names) or not names[position]:
        return
    dtype = g.dtype(names[position])
    if dtype is None:
        return
    allowed = SUPPORTED_OPS[node.op_type]
    name = type_name(dtype)
    if name not in allowed and name not in (*_QUANTIZED, "DOUBLE"):  # those are reported by _check_dtypes
        yield _at("error", "op-dtype", node, f"{node.op_type} on {name} (TensorRT supports {', '.join(allowed)})",
                  f"cast to one of {', '.join(allowed)} before this node")


def _check_constant_inputs(g: _Graph) -> Iterator[Finding]:
    rules = defaultdict(list)
    for op, index, since, what, level in CONSTANT_INPUTS:
        rules[op].append((index, since, what, level))
    for node in g.graph.node:
        for index, since, what, level in rules.get(node.op_type, ()):
            if g.opset >= since and len(node.input) > index and node.input[index] \
                    and node.input[index] not in g.constants:
                yield _at(level, "constant-input", node,
                          f"{what} (input {index}, {node.input[index]!r}) is computed at run time; TensorRT needs "
                          f"it as a build-time constant", f"make {what} an initializer or a Constant node")


def _check_dtypes(g: _Graph) -> Iterator[Finding]:
    io = {v.name for v in [*g.inputs, *g.outputs]}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name, elem_type in g.dtypes.items():
        kind = type_name(elem_type)
        if name in io:
            if kind == "INT64" and name in {v.name for v in g.inputs}:
                yield Finding("info", "int64", name, "graph input", f"input {name!r} is INT64: TensorRT >= 9 binds "
                              "it as INT64 (no cast to INT32; the parser logs 'Make sure input has Int64 binding')",
                              "nothing to do: the TensorRT backend binds an int64 buffer")
            elif kind == "BF16":
                yield Finding("error", "bf16-io", name, "graph I/O", f"{name!r} is BF16: numpy (the runtimes' host "
                              "side) has no bfloat16", "keep graph inputs and outputs fp32 (int64 for tokens)")
            elif kind not in ("FP32", "FP16", "INT32", "INT64", "BOOL", "UINT8"):
                yield Finding("error", "io-dtype", name, "graph I/O", f"{name!r} is {kind}, not a TensorRT I/O type",
                              "export graph inputs and outputs as FP32, FP16, INT32, INT64, BOOL or UINT8")
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
                      "stay INT64 in TensorRT >= 9; only TensorRT <= 8.6 cast them to INT32 with clamping",
                      "nothing to do")
    if names := by_kind.get("DOUBLE"):
        node, op, what = where(names)
        yield Finding("warning", "double", node, op, f"DOUBLE tensors ({what}): TensorRT casts them to FP32, "
                      "clamping to +-FLT_MAX", "export in float32")
    if names := by_kind.get("BF16"):
        node, op, what = where(names)
        yield Finding("warning", "bf16", node, op, f"BF16 tensors ({what}): supported by TensorRT only on GPUs of "
                      "compute capability 8.0+ (Ampere or newer), and the ONNX Runtime CPU reference cannot "
                      "check most bf16 kernels", "export with --precision fp16 unless every target GPU is Ampere+")
    for kind in _QUANTIZED:
        bad = [n for n in by_kind.get(kind, []) if not _in_qdq(g, n)]
        if bad:
            node, op, what = where(bad)
            yield Finding("error", "quantized-dtype", node, op, f"{kind} tensors outside Q/DQ ({what}): TensorRT "
                          "reaches quantized types only through QuantizeLinear/DequantizeLinear",
                          "express quantization with QuantizeLinear/DequantizeLinear pairs")
    known = {"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "DOUBLE", *_QUANTIZED}
    for kind, names in sorted(by_kind.items()):
        if kind not in known:
            node, op, what = where(names)
            hint = "UINT8 is only supported for graph inputs and outputs" if kind == "UINT8" else "no TensorRT type"
            yield Finding("error", "unsupported-dtype", node, op, f"{kind} tensors ({what}): {hint}",
                          "cast to a supported type (FP32, FP16, INT32, INT64, BOOL)")


def _in_qdq(g: _Graph, name: str) -> bool:
    """Made by QuantizeLinear, or an initializer read only by DequantizeLinear."""
    producer = g.producers.get(name)
    if producer is not None:
        return producer.op_type == "QuantizeLinear"
    readers = g.consumers.get(name, [])
    return bool(readers) and all(n.op_type == "DequantizeLinear" for n in readers)


def _check_io_shapes(g: _Graph) -> Iterator[Finding]:
    batch_names = set()
    for kind, values in (("input", g.inputs), ("output", g.outputs)):
        for value in values:
            if not value.type.tensor_type.HasField("shape"):
                yield Finding("error", "dynamic-dims", value.name, f"graph {kind}", f"{kind} {value.name!r} has no "
                              "known rank", "export with a static rank and fixed sizes for every dim but batch")
                continue
            dims = value.type.tensor_type.shape.dim
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value"):
                    continue
                if axis == 0:
                    batch_names.add(dim.dim_param or "?")
                    continue
                yield Finding("error", "dynamic-dims", value.name, f"graph {kind}",
                              f"dim {axis} of {kind} {value.name!r} is dynamic ({dim.dim_param or 'unnamed'}); only "
                              "the batch dim (0) may vary, it is the only one the optimization profiles cover",
                              "export with fixed sizes for every dim but the first")
    if len(batch_names) > 1:
        yield Finding("warning", "batch-dim", "graph", "-", f"inputs/outputs name their batch dim differently "
                      f"({', '.join(sorted(batch_names))}); every profile gives all inputs one batch range",
                      "export with one shared batch dim")
    for name in {v.name for v in g.inputs} & {v.name for v in g.outputs}:
        yield Finding("warning", "io-name-clash", name, "graph I/O", f"{name!r} is both an input and an output; "
                      "TensorRT renames the output to '__" + name + "'", "give the output its own name")


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
                          "is absolute or leaves the graph's folder; TensorRT rejects '..' paths",
                          "keep the .data file next to the .onnx and store a plain file name")
        elif not data.is_file():
            yield Finding("error", "external-data", location, "file", f"external data file {location!r} is missing",
                          "copy the package again, or re-export it")
        else:
            yield Finding("info", "external-data", location, "file", f"weights are in {location} "
                          f"({data.stat().st_size / 2**20:.1f} MiB); build-engine parses the graph by path "
                          "(parse_from_file), so TensorRT finds them", "nothing to do: keep it next to the .onnx")


def _check_precision(g: _Graph, state: Sequence[tuple[str, str]]) -> Iterator[Finding]:
    """fp32 islands: norms, their reductions, exp/decay and the recurrent state must not run in fp16."""
    for node in g.graph.node:
        if not node.input or not g.is_low_precision(node.input[0]):
            continue
        low = type_name(g.dtype(node.input[0]))
        if node.op_type in NORM_OPS:
            yield _at("error", "fp16-norm", node, f"{node.op_type} is fed {low}: a strongly typed build normalises "
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
                yield Finding("error", "state-dtype", name, "graph I/O", f"state tensor {name!r} is "
                              f"{type_name(dtype)}; the recurrent state must stay fp32", "export the state as float32")
        for reader in g.consumers.get(state_in, []):
            if reader.op_type == "Cast" and _cast_target(reader) in _LOW_PRECISION:
                yield _at("error", "fp16-state", reader, f"state {state_in!r} is cast to "
                          f"{type_name(_cast_target(reader))}: the state update would run in low precision",
                          "keep the WKV state update in float32")
        producer = g.producers.get(state_out)
        if producer is not None and producer.op_type == "Cast" and g.is_low_precision(producer.input[0]):
            yield _at("error", "fp16-state", producer, f"new state {state_out!r} is computed in "
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
               state: Sequence[tuple[str, str]] | None = None) -> list[Finding]:
    """Every finding for `model` (loaded without external data), errors first."""
    g = _Graph(model)
    pairs = state_pairs_from_names(model) if state is None else state
    findings = [*_check_opset(g), *_check_ops(g), *_check_constant_inputs(g), *_check_dtypes(g),
                *_check_io_shapes(g), *_check_file(g, graph_path), *_check_precision(g, pairs), *_precision_note(g)]
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def lint_package(package_dir: str | Path) -> LintReport:
    """Lint the step graph of the package in `package_dir`."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    graph_path = package_dir / manifest.graphs[STEP_GRAPH].path
    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, ...
        raise LintError(f"{graph_path}: cannot read the ONNX graph ({type(exc).__name__}: {exc})") from None
    findings = lint_model(model, graph_path, [(s.input, s.output) for s in manifest.state])
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    return LintReport(str(graph_path), opset, len(model.graph.node), tuple(findings))


def format_report(report: LintReport) -> str:
    """Human-readable report: one block per finding, then a verdict line."""
    lines = [f"{report.graph}: opset {report.opset}, {report.node_count} nodes"]
    for f in report.findings:
        lines.append(f"{f.level.upper():<8}{f.node} ({f.op}): {f.message}")
        lines.append(f"{'':<8}fix: {f.fix}")
    errors, warnings, notes = (report.count(level) for level in LEVELS)
    verdict = ("TensorRT's ONNX parser would reject this graph, or build it wrongly" if errors
               else "ready for `rwkv-deploy build-engine`")
    lines.append(f"{errors} errors, {warnings} warnings, {notes} notes: {verdict}")
    return "\n".join(lines)
