"""check-trt's calibration corpus: small synthetic ONNX graphs, one or more per lint rule, each with the
finding it must raise. `test_lint_corpus.py` runs every graph through the lint AND the real parser and
builder of TensorRT for RTX: a graph gets an error-level finding exactly when the real parse+build fails.

The verdicts recorded with each case are what RTX 1.7.1.116 did (docs/tensorrt.md lists its messages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

N = helper.make_node


def tensor(name: str, elem_type: int = TP.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["batch", 8] if shape is None else shape)


def model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 18,
          domains: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "corpus", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


@dataclass(frozen=True)
class Case:
    """A graph, the (level, check) findings the lint must give it, and whether the real build fails."""

    name: str
    make: Callable[[], onnx.ModelProto]
    expect: frozenset[tuple[str, str]]
    fails: bool  # what TensorRT for RTX's parse+build did
    targets: tuple[str, ...] = ()
    external: str | None = field(default=None)  # None, "ok", "dotdot" or "missing": weights as external data


def case(name: str, make: Callable[[], onnx.ModelProto], expect: set[tuple[str, str]], fails: bool,
         targets: tuple[str, ...] = (), external: str | None = None) -> Case:
    return Case(name, make, frozenset(expect), fails, targets, external)


def relu(opset: int = 18) -> onnx.ModelProto:
    return model([N("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y")], opset=opset)


def cast_chain(*types: int, io: int = TP.FLOAT, opset: int = 18) -> onnx.ModelProto:
    """x -> Cast(types[0]) -> ... -> Cast(FLOAT) -> y, with an Add on the innermost type."""
    nodes, current = [], "x"
    for i, t in enumerate(types):
        nodes.append(N("Cast", [current], [f"c{i}"], name=f"to_{TP.DataType.Name(t).lower()}", to=t))
        current = f"c{i}"
    nodes.append(N("Cast", [current], ["y"], name="back", to=TP.FLOAT))
    return model(nodes, [tensor("x", io)], [tensor("y")], opset=opset)


def to16(x: str = "x", out: str = "x16") -> onnx.NodeProto:
    return N("Cast", [x], [out], name="to_fp16", to=TP.FLOAT16)


def to32(x: str, out: str = "y") -> onnx.NodeProto:
    return N("Cast", [x], [out], name="to_fp32", to=TP.FLOAT)


def matmul(dtype=np.float32) -> onnx.ModelProto:
    nodes = [N("MatMul", ["x", "w"], ["y"], name="mm")] if dtype == np.float32 else \
        [to16(), N("MatMul", ["x16", "w"], ["y16"], name="mm16"), to32("y16")]
    return model(nodes, [tensor("x")], [tensor("y")], [const("w", np.eye(8), dtype)])


def reduce_with_axes(axes_nodes: list, inits: list, shape: list | None = None) -> onnx.ModelProto:
    return model([*axes_nodes, N("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)],
                 [tensor("x", shape=shape)], [tensor("y", shape=["batch", 1] if shape is None else None)], inits)


def quantized_ort(op: str, io: int) -> onnx.ModelProto:
    if op == "GatherBlockQuantized":
        node = N(op, ["w", "tok", "s"], ["y"], name="gbq", domain="com.microsoft", block_size=16, bits=8,
                 quantize_axis=1)
        return model([node], [tensor("tok", TP.INT64, ["batch"])], [tensor("y", shape=["batch", 32])],
                     [const("w", np.zeros((16, 32)), np.uint8), const("s", np.ones((16, 2)), np.float32)],
                     domains=("com.microsoft",))
    scale_dtype = np.float16 if io == TP.FLOAT16 else np.float32
    node = N(op, ["x", "w", "s"], ["y"], name="mmnb", domain="com.microsoft", K=32, N=16, bits=4, block_size=32)
    return model([node], [tensor("x", io, ["batch", 32])], [tensor("y", io, ["batch", 16])],
                 [const("w", np.zeros((16, 1, 16)), np.uint8), const("s", np.ones(16), scale_dtype)],
                 domains=("com.microsoft",))


def shape_derived(op_nodes: list, inits: list, out_shape: list | None) -> onnx.ModelProto:
    """A graph whose axes come from Shape(x) arithmetic (static dims): values known at build time."""
    return model(op_nodes, [tensor("x")], [tensor("y", shape=out_shape)], inits)


E, P, W = "error", "policy", "warning"

CASES: list[Case] = [
    case("clean", relu, set(), fails=False),
    case("opset-8", lambda: relu(8), {(W, "opset")}, fails=False),
    case("opset-28", lambda: relu(28), {(W, "opset")}, fails=False),
    case("unsupported-op-det", lambda: model([N("Det", ["x"], ["y"], name="det")], [tensor("x", shape=["batch", 4, 4])],
                                             [tensor("y", shape=["batch"])]), {(E, "unsupported-op")}, fails=True),
    case("unsupported-op-nonzero-rtx", lambda: model([N("NonZero", ["x"], ["y"], name="nz")], [tensor("x")],
                                                     [tensor("y", TP.INT64, [2, None])]),
         {(E, "unsupported-op")}, fails=True),
    case("supported-resize", lambda: model([N("Resize", ["x", "", "sc"], ["y"], name="rs", mode="nearest")],
                                           [tensor("x", shape=["batch", 1, 4])], [tensor("y", shape=["batch", 1, 8])],
                                           [const("sc", [1.0, 1.0, 2.0], np.float32)]), set(), fails=False),
    case("supported-swish-rtx", lambda: model([N("Swish", ["x"], ["y"], name="sw")], [tensor("x")], [tensor("y")],
                                              opset=24), set(), fails=False),
    case("custom-op", lambda: model([N("FusedThing", ["x"], ["y"], name="fused", domain="com.example")],
                                    [tensor("x")], [tensor("y")], domains=("com.example",)),
         {(E, "custom-op")}, fails=True),
    case("ort-gather-block-quantized", lambda: quantized_ort("GatherBlockQuantized", TP.FLOAT),
         {(E, "ort-quantized-op")}, fails=True),
    case("ort-matmulnbits-fp32", lambda: quantized_ort("MatMulNBits", TP.FLOAT), {(E, "ort-quantized-op")}, fails=True),
    case("ort-matmulnbits-fp16", lambda: quantized_ort("MatMulNBits", TP.FLOAT16), {(E, "ort-quantized-op")},
         fails=True),
    case("op-dtype-erf-int32", lambda: model([N("Erf", ["x"], ["y"], name="erf")], [tensor("x", TP.INT32)],
                                             [tensor("y", TP.INT32)]), {(E, "op-dtype")}, fails=True),
    case("op-dtype-relu-int32", lambda: model([N("Relu", ["x"], ["y"], name="relu")], [tensor("x", TP.INT32)],
                                              [tensor("y", TP.INT32)]), {(E, "op-dtype")}, fails=True),
    case("cumsum-int32-ok", lambda: model([N("CumSum", ["x", "ax"], ["y"], name="cs")], [tensor("x", TP.INT32)],
                                          [tensor("y", TP.INT32)], [const("ax", 1)]), set(), fails=False),
    case("op-restriction-layernorm", lambda: model(
        [N("LayerNormalization", ["x", "sc"], ["y", "mean"], name="ln", axis=-1)], [tensor("x")],
        [tensor("y"), tensor("mean", shape=["batch", 1])], [const("sc", np.ones(8), np.float32)]),
         {(E, "op-restriction")}, fails=True),
    case("op-restriction-maxpool", lambda: model(
        [N("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2])], [tensor("x", shape=["batch", 2, 8])],
        [tensor("y", shape=["batch", 2, 7]), tensor("idx", TP.INT64, ["batch", 2, 7])]),
         {(E, "op-restriction")}, fails=True),
    case("reduce-axes-constant-cast", lambda: reduce_with_axes(
        [N("Constant", [], ["k"], name="k", value=const("v", [-1], np.int32)), N("Cast", ["k"], ["axes"], name="c",
                                                                                 to=TP.INT64)], []),
         set(), fails=False),
    case("reduce-axes-computed-from-constants", lambda: reduce_with_axes(
        [N("Neg", ["m"], ["axes"], name="neg")], [const("m", [1])]), {(E, "constant-input")}, fails=True),
    case("reduce-axes-unsqueezed-constant", lambda: reduce_with_axes(
        [N("Unsqueeze", ["m1", "z"], ["axes"], name="u")], [const("m1", -1), const("z", [0])]),
         {(E, "constant-input")}, fails=True),
    case("reduce-axes-from-shapes", lambda: reduce_with_axes(
        [N("Shape", ["x"], ["sh"], name="shape", start=1, end=2), N("Div", ["sh", "eight"], ["axes"], name="div")],
        [const("eight", [8])]), {(E, "constant-input")}, fails=True),
    case("unsqueeze-axes-from-shapes", lambda: shape_derived(
        [N("Shape", ["x"], ["sh"], name="shape", start=1, end=2), N("Div", ["sh", "eight"], ["axes"], name="div"),
         N("Unsqueeze", ["x", "axes"], ["y"], name="unsq")], [const("eight", [8])], ["batch", 1, 8]),
         set(), fails=False),
    case("unsqueeze-axes-from-batch-shape", lambda: shape_derived(
        [N("Shape", ["x"], ["sh"], name="shape", start=0, end=1), N("Mul", ["sh", "zero"], ["axes"], name="mul"),
         N("Unsqueeze", ["x", "axes"], ["y"], name="unsq")], [const("zero", [0])], [1, "batch", 8]), set(), fails=False),
    case("squeeze-axes-from-shapes", lambda: model(
        [N("Shape", ["x"], ["sh"], name="shape", start=1, end=2), N("Sub", ["sh", "one"], ["axes"], name="sub"),
         N("Squeeze", ["x", "axes"], ["y"], name="sq")], [tensor("x", shape=["batch", 2, 1])],
        [tensor("y", shape=["batch", 2])], [const("one", [0])]), set(), fails=False),
    case("slice-axes-from-shapes", lambda: shape_derived(
        [N("Shape", ["x"], ["sh"], name="shape", start=1, end=2), N("Div", ["sh", "eight"], ["axes"], name="div"),
         N("Slice", ["x", "st", "en", "axes"], ["y"], name="sl")], [const("st", [0]), const("en", [4]),
                                                                    const("eight", [8])], ["batch", 4]),
         set(), fails=False),
    case("cumsum-axis-from-shapes", lambda: shape_derived(
        [N("Shape", ["x"], ["sh"], name="shape", start=1, end=2), N("Div", ["sh", "eight"], ["a1"], name="div"),
         N("Squeeze", ["a1"], ["ax"], name="sq"), N("CumSum", ["x", "ax"], ["y"], name="cs")], [const("eight", [8])],
        None), set(), fails=False),
    case("unsqueeze-axes-from-input-values", lambda: model(
        [N("Unsqueeze", ["x", "axes"], ["y"], name="unsq")], [tensor("x"), tensor("axes", TP.INT64, [1])],
        [tensor("y", shape=None)]), {(E, "constant-input")}, fails=True),
    case("cumsum-axis-from-input-values", lambda: model(
        [N("CumSum", ["x", "ax"], ["y"], name="cs")], [tensor("x"), tensor("ax", TP.INT64, [])], [tensor("y")]),
         {(E, "constant-input")}, fails=True),
    case("onehot-depth-from-input-values", lambda: model(
        [N("OneHot", ["i", "depth", "vals"], ["y"], name="oh")], [tensor("i", TP.INT64, ["batch"]),
                                                                  tensor("depth", TP.INT64, [])],
        [tensor("y", shape=["batch", None])], [const("vals", [0.0, 1.0], np.float32)]),
         {(E, "constant-input")}, fails=True),
    case("slice-axes-from-input-values", lambda: model(
        [N("Slice", ["x", "st", "en", "axes"], ["y"], name="sl")], [tensor("x"), tensor("axes", TP.INT64, [1])],
        [tensor("y", shape=None)], [const("st", [0]), const("en", [4])]), {(E, "constant-input")}, fails=True),
    case("dropout-mode-from-input", lambda: model(
        [N("Dropout", ["x", "ratio", "mode"], ["y"], name="do")], [tensor("x"), tensor("mode", TP.BOOL, [])],
        [tensor("y")], [const("ratio", 0.5, np.float32)]), {(E, "constant-input")}, fails=True),
    case("int64-input", lambda: cast_chain(io=TP.INT64), {("info", "int64")}, fails=False),
    case("bf16-io", lambda: cast_chain(io=TP.BFLOAT16), {(P, "bf16-io")}, fails=False),
    case("io-dtype-double", lambda: cast_chain(io=TP.DOUBLE), {(W, "io-dtype")}, fails=False),
    case("io-dtype-uint16", lambda: cast_chain(io=TP.UINT16), {(E, "io-dtype")}, fails=True),
    case("uint8-io-ok", lambda: cast_chain(io=TP.UINT8), set(), fails=False),
    case("double-inside", lambda: cast_chain(TP.DOUBLE), {(W, "double")}, fails=False),
    case("bf16-inside", lambda: cast_chain(TP.BFLOAT16), {(W, "bf16")}, fails=False),
    case("bf16-inside-for-turing", lambda: cast_chain(TP.BFLOAT16), {(E, "target-bf16")}, fails=True,
         targets=("7.5",)),
    case("int8-cast-ok", lambda: cast_chain(TP.INT8), set(), fails=False),
    case("fp8-cast", lambda: cast_chain(TP.FLOAT8E4M3FN, opset=19), {(E, "quantized-dtype")}, fails=True),
    case("int4-cast", lambda: cast_chain(TP.INT4, opset=21), {(E, "quantized-dtype")}, fails=True),
    case("qdq-uint8-ok", lambda: model([N("QuantizeLinear", ["x", "s"], ["q"], name="q"),
                                        N("DequantizeLinear", ["q", "s"], ["y"], name="dq")], [tensor("x")],
                                       [tensor("y")], [const("s", 0.1, np.float32)]), set(), fails=False),
    case("uint8-inside", lambda: cast_chain(TP.UINT8), {(E, "unsupported-dtype")}, fails=True),
    case("uint16-inside", lambda: cast_chain(TP.UINT16), {(E, "unsupported-dtype")}, fails=True),
    case("dynamic-dim-not-batch", lambda: model([N("Relu", ["x"], ["y"], name="relu")],
                                                [tensor("x", shape=["batch", "seq", 8])],
                                                [tensor("y", shape=["batch", "seq", 8])]),
         {(P, "dynamic-dims")}, fails=False),
    case("prefill-T-is-fine", lambda: model([N("Relu", ["x"], ["y"], name="relu")], [tensor("x", shape=["batch", "T"])],
                                            [tensor("y", shape=["batch", "T"])]), set(), fails=False),
    case("batch-dim-names", lambda: model([N("Add", ["x", "z"], ["y"], name="add")],
                                          [tensor("x"), tensor("z", shape=["B", 8])], [tensor("y")]),
         {(W, "batch-dim")}, fails=False),
    case("io-name-clash", lambda: model([N("Relu", ["x"], ["y"], name="relu")], [tensor("x")],
                                        [tensor("y"), tensor("x")]), {(W, "io-name-clash")}, fails=False),
    case("fp16-norm", lambda: model([to16(), N("LayerNormalization", ["x16", "sc", "bi"], ["y16"], name="ln16", axis=-1),
                                     to32("y16")], [tensor("x")], [tensor("y")],
                                    [const("sc", np.ones(8), np.float16), const("bi", np.zeros(8), np.float16)]),
         {(P, "fp16-norm")}, fails=False),
    case("fp16-state", lambda: model([to16("state_in.s", "s16"), N("Mul", ["s16", "d"], ["n16"], name="decay16"),
                                      to32("n16", "state_out.s")], [tensor("state_in.s")], [tensor("state_out.s")],
                                     [const("d", [0.5], np.float16)]), {(P, "fp16-state")}, fails=False),
    case("state-dtype", lambda: model([N("Mul", ["state_in.s", "d"], ["state_out.s"], name="mul")],
                                      [tensor("state_in.s", TP.FLOAT16)], [tensor("state_out.s", TP.FLOAT16)],
                                      [const("d", [0.5], np.float16)]), {(P, "state-dtype")}, fails=False),
    case("fp16-reduction", lambda: model([to16(), N("ReduceL2", ["x16", "ax"], ["r16"], name="l2", keepdims=1),
                                          to32("r16")], [tensor("x")], [tensor("y", shape=["batch", 1])],
                                         [const("ax", [-1])]), {(W, "fp16-reduction")}, fails=False),
    case("fp16-decay", lambda: model([to16(), N("Exp", ["x16"], ["e16"], name="exp"), to32("e16")], [tensor("x")],
                                     [tensor("y")]), {(W, "fp16-decay")}, fails=False),
    case("fp32-gemm", lambda: matmul(np.float32), set(), fails=False),
    case("fp32-gemm-for-turing", lambda: matmul(np.float32), {(E, "target-gemm")}, fails=True, targets=("7.5",)),
    case("fp16-gemm-for-turing", lambda: matmul(np.float16), set(), fails=False, targets=("7.5",)),
    case("external-data-ok", lambda: matmul(np.float32), {("info", "external-data")}, fails=False, external="ok"),
    case("external-data-outside", lambda: matmul(np.float32), {(E, "external-data")}, fails=True, external="dotdot"),
    case("external-data-missing", lambda: matmul(np.float32), {(E, "external-data")}, fails=True, external="missing"),
]

# Rules without a corpus graph, and why: a 2 GiB graph file is too costly to write in every CI run.
NOT_IN_CORPUS = {"file-size": "writing a 2 GiB .onnx costs minutes and 2 GiB of disk; protobuf's limit is documented",
                 "precision": "a note on every graph (asserted by the exported packages' lint)"}


def write_case(case_: Case, directory: Path) -> Path:
    """The case's graph as directory/g.onnx (and its weights file, for the external-data cases)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "g.onnx"
    made = case_.make()
    if case_.external is None:
        onnx.save(made, str(path))
        return path
    onnx.save(made, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    if case_.external != "ok":
        loaded = onnx.load(str(path), load_external_data=False)
        for entry in loaded.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/g.onnx.data" if case_.external == "dotdot" else "gone.onnx.data"
        if case_.external == "dotdot":
            (directory.parent / "elsewhere").mkdir(exist_ok=True)
            (directory / "g.onnx.data").rename(directory.parent / "elsewhere" / "g.onnx.data")
        onnx.save(loaded, str(path))
    return path
