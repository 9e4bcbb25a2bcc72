"""The graphs of a package against manifest.json: input/output names, dtypes and shapes, opset, and
where the weights live (external data). Needs the `onnx` package (the `[export]` extra); `verify` runs
these checks when it is installed and says so when it is not.
"""

from __future__ import annotations

import zipfile
from typing import TYPE_CHECKING, Iterator

import onnx
from google.protobuf.message import DecodeError

from rwkv_deploy.fileio import UnsafePathError

from .manifest import GraphInfo, Manifest, external_data_path, shape_text
from .names import (BATCH_AXIS, LOGITS_DTYPE, PREFILL_GRAPH, PREFILL_LOGITS_ALL, PREFILL_TOKENS_INPUT, TIME_AXIS,
                    TOKEN_DTYPE)

if TYPE_CHECKING:
    from .trust import PackageReader


def _checked_graphs(manifest: Manifest) -> Iterator[tuple[str, str, GraphInfo, tuple[str, int] | None]]:
    """(manifest field, graph kind, graph, operator domain and version it must import) of every graph to check:
    the package's graphs and its CPU graphs (each holds to its source graph's I/O and opset)."""
    for kind, graph in manifest.graphs.items():
        yield f"graphs.{kind}", kind, graph, None
    for kind, cpu in manifest.cpu_graphs.items():
        source = manifest.graphs[kind]
        yield (f"cpu_graphs.{kind}", kind, GraphInfo(path=cpu.path, precision=source.precision, opset=source.opset,
                                                    external_data=cpu.external_data), (cpu.ops, cpu.ops_version))


def graph_problems(reader: "PackageReader", manifest: Manifest) -> list[str]:
    problems = []
    for field, kind, graph, operators in _checked_graphs(manifest):
        if graph.path not in reader.names:
            continue  # reported as missing by the file checks
        try:
            with reader.open(graph.path) as f:
                model = onnx.load_model_from_string(f.read())  # external data is never loaded from bytes
        except (OSError, zipfile.BadZipFile, DecodeError, ValueError, RuntimeError, UnsafePathError) as exc:
            problems.append(f"{graph.path}: not a readable ONNX model ({type(exc).__name__}: {exc})")
            continue
        want_in, want_out = _expected_io(kind, graph, manifest)
        weights = {t.name for t in model.graph.initializer}  # old IR versions also list initializers as inputs
        inputs = [v for v in model.graph.input if v.name not in weights]
        problems += (_io_problems(graph.path, "input", inputs, want_in)
                     + _io_problems(graph.path, "output", list(model.graph.output), want_out)
                     + _opset_problems(field, graph, model)
                     + _external_data_problems(reader, field, graph, model)
                     + (_operator_domain_problems(field, graph.path, model, *operators) if operators else []))
    return problems


def _operator_domain_problems(field: str, path: str, model: onnx.ModelProto, domain: str, version: int) -> list[str]:
    """A CPU graph imports the operator domain the manifest declares for it, at that version."""
    got = {o.domain: o.version for o in model.opset_import}.get(domain)
    if got == version:
        return []
    return [f"{path}: graph imports {domain} version {got} but manifest.json {field} declares {version}"]


def _expected_io(kind: str, graph: GraphInfo, manifest: Manifest) -> tuple[list[tuple], list[tuple]]:
    """(name, dtype, shape) of each input and output the manifest promises for the graph `kind`.

    step: token [batch]; prefill: tokens [batch, T], logits of the last position or of all T positions."""
    vocab = manifest.model.vocab_size
    state_in = [(s.input, s.dtype, list(s.shape)) for s in manifest.state]
    state_out = [(s.output, s.dtype, list(s.shape)) for s in manifest.state]
    if kind == PREFILL_GRAPH:
        logits = [BATCH_AXIS, TIME_AXIS, vocab] if graph.logits == PREFILL_LOGITS_ALL else [BATCH_AXIS, vocab]
        return ([(PREFILL_TOKENS_INPUT, TOKEN_DTYPE, [BATCH_AXIS, TIME_AXIS])] + state_in,
                [(manifest.logits_output, LOGITS_DTYPE, logits)] + state_out)
    return ([(manifest.token_input, TOKEN_DTYPE, [BATCH_AXIS])] + state_in,
            [(manifest.logits_output, LOGITS_DTYPE, [BATCH_AXIS, vocab])] + state_out)


def _io_problems(where: str, kind: str, actual: list[onnx.ValueInfoProto],
                 expected: list[tuple[str, str, list]]) -> list[str]:
    by_name = {v.name: v for v in actual}
    want_names = [name for name, _, _ in expected]
    problems = [f"{where}: graph has no {kind} {name!r} (manifest.json expects it)"
                for name in want_names if name not in by_name]
    problems += [f"{where}: graph {kind} {v.name!r} is not declared in manifest.json"
                 for v in actual if v.name not in want_names]
    if not problems and [v.name for v in actual] != want_names:
        problems.append(f"{where}: graph {kind}s are not in manifest.json's order (token/logits, then state)")
    for name, dtype, shape in expected:
        if name in by_name:
            got_dtype, got_shape = _tensor_type(by_name[name])
            if got_dtype != dtype:
                problems.append(f"{where}: {kind} {name!r} is {got_dtype}, expected {dtype}")
            if got_shape != shape:
                problems.append(f"{where}: {kind} {name!r} has shape {shape_text(got_shape)}, expected {shape_text(shape)}")
    return problems


def _tensor_type(value: onnx.ValueInfoProto) -> tuple[str, list | None]:
    """(dtype name as numpy spells it, dims: symbolic names as str, fixed sizes as int, "?" when unknown)."""
    if value.type.WhichOneof("value") != "tensor_type":
        return f"non-tensor ({value.type.WhichOneof('value')})", None
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    if not tensor.HasField("shape"):
        return dtype, None
    return dtype, [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else "?"
                   for d in tensor.shape.dim]


def _opset_problems(field: str, graph: GraphInfo, model: onnx.ModelProto) -> list[str]:
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    got = opsets.get("ai.onnx")
    if got == graph.opset:
        return []
    return [f"{graph.path}: graph uses opset {got} but manifest.json {field}.opset is {graph.opset}"]


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and constant attributes, subgraphs (If/Loop bodies) included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(sub)


def _external_data_problems(reader: "PackageReader", field: str, graph: GraphInfo,
                            model: onnx.ModelProto) -> list[str]:
    locations = {entry.value for t in _graph_tensors(model.graph)
                 if t.data_location == onnx.TensorProto.EXTERNAL
                 for entry in t.external_data if entry.key == "location"}
    declared = graph.external_data
    problems = [f"{graph.path}: weights are stored in external file {loc!r} that manifest.json "
                f"{field}.external_data does not declare ({declared!r})"
                for loc in sorted(locations) if loc != declared]
    if declared and declared not in locations:
        problems.append(f"{graph.path}: manifest.json declares external data {declared!r} but the graph has none there")
    for loc in sorted(locations):
        if external_data_path(graph.path, loc) not in reader.names:
            problems.append(f"{external_data_path(graph.path, loc)}: external data of {graph.path} but missing")
    return problems
