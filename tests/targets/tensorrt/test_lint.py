"""`check-trt`: every graph of the exporter's packages passes; crafted graphs with known problems are caught.

The exporter's packages (every RWKV generation, fp32 and fp16, with the prefill graph; shared exports) are
linted graph by graph. The crafted graphs here test the lint's own logic (control-flow bodies, levels,
flavours, the command); whether each verdict matches the real TensorRT for RTX is test_lint_corpus.py's job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.targets.tensorrt import lint
from rwkv_deploy.targets.tensorrt.lint import Finding, lint_model, lint_package
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7")
EXPORTS = [(v, p) for v in VERSIONS for p in ("fp32", "fp16")]
runner = CliRunner()


@pytest.fixture(scope="module")
def packages(shared_package) -> dict[tuple[str, str], Path]:
    return {key: shared(shared_package, *key) for key in EXPORTS}


# -- crafted graphs ------------------------------------------------------------------------------------


def tensor(name: str, elem_type: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["batch", 8] if shape is None else shape)


def model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "crafted", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def errors(findings: list[Finding]) -> list[Finding]:
    """The findings that fail check-trt: TensorRT errors and policy violations."""
    return [f for f in findings if f.level in ("error", "policy")]


def test_a_clean_crafted_graph_has_no_errors_or_warnings():
    clean = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y")])
    assert [f.level for f in lint_model(clean)] == ["info"]  # only the precision note


# -- the exporter's packages -------------------------------------------------------------------------


@pytest.mark.parametrize("key", EXPORTS, ids=lambda k: f"v{k[0]}-{k[1]}")
def test_exported_packages_have_no_error_or_warning_in_any_graph(packages, key):
    report = lint_package(packages[key])
    assert [g.name for g in report.graphs] == ["step", "prefill"]  # every graph, the prefill's T included
    for graph in report.graphs:
        assert graph.opset == 18 and graph.node_count > 50
        assert [f for f in graph.findings if f.level != "info"] == []
        notes = {f.check for f in graph.findings}
        assert {"int64", "precision"} <= notes  # token input (int64) and the strongly typed precision note
        precision_note = by_check(list(graph.findings), "precision")[0].message
        assert ("FP16 tensors" in precision_note) == (key[1] == "fp16")


def test_check_trt_command_exits_0_on_an_export_and_1_on_a_bad_graph(packages, tmp_path):
    good = runner.invoke(app, ["check-trt", str(packages[("7", "fp16")])])
    assert good.exit_code == 0, good.output
    assert "0 errors, 0 policy, 0 warnings" in good.stdout and "ready for `rwkv-deploy build-engine`" in good.stdout
    assert good.stdout.count("prefill: ") == 1 and good.stdout.startswith("step: ")

    bad_dir = tmp_path / "bad"
    shutil.copytree(packages[("7", "fp32")], bad_dir)
    graph_name = json.loads((bad_dir / "manifest.json").read_text())["graphs"]["step"]["path"]
    onnx.save(model([helper.make_node("Det", ["x"], ["y"], name="det")], [tensor("x", shape=["batch", 4, 4])],
                    [tensor("y", shape=["batch"])]), str(bad_dir / graph_name))
    bad = runner.invoke(app, ["check-trt", str(bad_dir), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["errors"] >= 1 and report["flavour"] in ("tensorrt", "tensorrt_rtx")
    findings = report["graphs"][0]["findings"]
    assert {"level": "error", "check": "unsupported-op", "node": "det", "op": "Det"}.items() <= \
        next(f for f in findings if f["check"] == "unsupported-op").items()


# -- one problem per crafted graph ---------------------------------------------------------------------


def test_unsupported_op_is_an_error_naming_the_node():
    found = lint_model(model([helper.make_node("Det", ["x"], ["y"], name="the_det")],
                             [tensor("x", shape=["batch", 4, 4])], [tensor("y", shape=["batch"])]))
    [finding] = errors(found)
    assert (finding.check, finding.node, finding.op) == ("unsupported-op", "the_det", "Det")
    assert "not supported" in finding.message and finding.fix


def test_an_unsupported_op_inside_a_control_flow_body_is_found():
    body = helper.make_graph([helper.make_node("Det", ["x"], ["d"], name="det_in_branch")], "then", [],
                             [tensor("d", shape=["batch"])])
    other = helper.make_graph([helper.make_node("Identity", ["y0"], ["e"], name="id")], "else", [],
                              [tensor("e", shape=["batch"])])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=body, else_branch=other)
    graph = model([node], [tensor("x", shape=["batch", 4, 4]), tensor("y0", shape=["batch"]),
                           tensor("cond", TensorProto.BOOL, [])], [tensor("y", shape=["batch"])])
    assert [(f.check, f.node) for f in errors(lint_model(graph))] == [("unsupported-op", "det_in_branch")]


def test_custom_domain_op_is_an_error():
    node = helper.make_node("FusedThing", ["x"], ["y"], name="fused", domain="com.example")
    m = model([node], [tensor("x")], [tensor("y")])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    assert [(f.check, f.node) for f in errors(lint_model(m))] == [("custom-op", "fused")]


def test_reduce_axes_computed_at_run_time_are_an_error_and_constant_axes_are_not():
    computed = [helper.make_node("Neg", ["minus_axes"], ["axes"], name="negate"),
                helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)]
    found = lint_model(model(computed, [tensor("x")], [tensor("y", shape=["batch", 1])],
                             [const("minus_axes", [-1])]))
    [finding] = errors(found)
    assert (finding.check, finding.node, finding.op) == ("constant-input", "mean", "ReduceMean")
    assert "axes" in finding.message and "initializer" in finding.fix

    constant = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)]
    assert errors(lint_model(model(constant, [tensor("x")], [tensor("y", shape=["batch", 1])],
                                   [const("axes", [-1])]))) == []
    from_constant_node = [helper.make_node("Constant", [], ["axes"], name="k", value=const("v", [-1])),
                          helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=1)]
    assert errors(lint_model(model(from_constant_node, [tensor("x")], [tensor("y", shape=["batch", 1])]))) == []


def test_a_dynamic_input_dim_other_than_batch_and_T_breaks_the_policy():
    graph = model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                  [tensor("x", shape=["batch", "seq", 8])], [tensor("y", shape=["batch", "seq", 8])])
    found = by_check(errors(lint_model(graph)), "dynamic-dims")
    assert [(f.level, f.node, f.op) for f in found] == [("policy", "x", "graph input")]  # outputs are TensorRT's
    assert "dim 1" in found[0].message and "seq" in found[0].message
    prefill = model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                    [tensor("x", shape=["batch", "T"])], [tensor("y", shape=["batch", "T"])])
    assert by_check(lint_model(prefill), "dynamic-dims") == []  # the prefill length has its --tokens range


def test_layer_norm_on_fp16_input_in_an_fp16_graph_is_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["x16"], name="to_fp16", to=TensorProto.FLOAT16),
             helper.make_node("LayerNormalization", ["x16", "scale", "bias"], ["y16"], name="ln_fp16", axis=-1),
             helper.make_node("Cast", ["y16"], ["y"], name="to_fp32", to=TensorProto.FLOAT)]
    init = [const("scale", np.ones(8), np.float16), const("bias", np.zeros(8), np.float16)]
    found = errors(lint_model(model(nodes, [tensor("x")], [tensor("y")], init)))
    assert [(f.level, f.check, f.node, f.op) for f in found] == [("policy", "fp16-norm", "ln_fp16",
                                                                  "LayerNormalization")]
    assert "float32" in found[0].fix


def test_layer_norm_kept_in_fp32_inside_an_fp16_graph_is_fine():
    nodes = [helper.make_node("Cast", ["x"], ["x16"], name="to_fp16", to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["x16", "w"], ["h16"], name="matmul_fp16"),
             helper.make_node("Cast", ["h16"], ["h"], name="to_fp32", to=TensorProto.FLOAT),
             helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], name="ln", axis=-1)]
    init = [const("w", np.eye(8), np.float16), const("scale", np.ones(8), np.float32),
            const("bias", np.zeros(8), np.float32)]
    assert [f for f in lint_model(model(nodes, [tensor("x")], [tensor("y")], init)) if f.level != "info"] == []


def test_bf16_inside_the_graph_is_a_warning_and_at_its_inputs_an_error():
    inside = [helper.make_node("Cast", ["x"], ["xb"], name="to_bf16", to=TensorProto.BFLOAT16),
              helper.make_node("Cast", ["xb"], ["y"], name="back", to=TensorProto.FLOAT)]
    [warning] = [f for f in lint_model(model(inside, [tensor("x")], [tensor("y")])) if f.level == "warning"]
    assert (warning.check, warning.node, warning.op) == ("bf16", "to_bf16", "Cast")
    assert "8.0" in warning.message

    at_input = [helper.make_node("Cast", ["x"], ["y"], name="from_bf16", to=TensorProto.FLOAT)]
    found = errors(lint_model(model(at_input, [tensor("x", TensorProto.BFLOAT16)], [tensor("y")])))
    assert [(f.level, f.check, f.node) for f in found] == [("policy", "bf16-io", "x")]


def test_recurrent_state_updated_in_fp16_is_an_error():
    nodes = [helper.make_node("Cast", ["state_in.s"], ["s16"], name="state_to_fp16", to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["s16", "decay"], ["n16"], name="decay_fp16"),
             helper.make_node("Cast", ["n16"], ["state_out.s"], name="state_to_fp32", to=TensorProto.FLOAT)]
    graph = model(nodes, [tensor("state_in.s")], [tensor("state_out.s")], [const("decay", [0.5], np.float16)])
    found = by_check(errors(lint_model(graph)), "fp16-state")
    assert sorted(f.node for f in found) == ["state_to_fp16", "state_to_fp32"]


def test_double_is_a_warning_int8_is_fine_and_fp8_outside_qdq_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["xd"], ["xi"], name="to_int8", to=TensorProto.INT8),
             helper.make_node("Cast", ["xi"], ["x8"], name="to_fp8", to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Cast", ["x8"], ["y"], name="back", to=TensorProto.FLOAT)]
    found = {(f.level, f.check, f.node) for f in lint_model(model(nodes, [tensor("x")], [tensor("y")], opset=19))}
    assert ("warning", "double", "to_double") in found
    assert ("error", "quantized-dtype", "to_fp8") in found
    assert not any(node == "to_int8" for _, _, node in found)  # INT8 casts build (measured with RTX)


def test_opset_outside_the_parser_range():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    assert [f.level for f in by_check(lint_model(model(relu, [tensor("x")], [tensor("y")], opset=8)), "opset")] \
        == ["warning"]  # RTX parsed it: the documented range is not a hard limit
    assert [f.level for f in by_check(lint_model(model(relu, [tensor("x")], [tensor("y")], opset=25)), "opset")] \
        == ["warning"]


def test_graph_file_at_the_protobuf_limit_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "g.onnx"
    graph = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y")])
    onnx.save(graph, str(path))
    assert by_check(lint_model(graph, path), "file-size") == []
    monkeypatch.setattr(lint, "PROTOBUF_LIMIT", path.stat().st_size)  # a 2 GiB file is too costly to write
    [finding] = by_check(lint_model(graph, path), "file-size")
    assert finding.level == "error" and "--external-data" in finding.fix


def test_external_data_outside_the_graph_folder_is_an_error(tmp_path):
    weights = const("w", np.eye(8), np.float32)
    graph = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [tensor("x")], [tensor("y")], [weights])
    onnx.save(graph, str(tmp_path / "g.onnx"), save_as_external_data=True, location="g.onnx.data",
              size_threshold=0)
    loaded = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    assert [f.level for f in by_check(lint_model(loaded, tmp_path / "g.onnx"), "external-data")] == ["info"]

    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere/g.onnx.data"
    [finding] = by_check(lint_model(loaded, tmp_path / "g.onnx"), "external-data")
    assert finding.level == "error" and "'..'" in finding.message


def test_the_flavour_decides_what_the_parser_supports():
    nonzero = model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [tensor("x")],
                    [tensor("y", TensorProto.INT64, [2, None])])
    assert [f.check for f in errors(lint_model(nonzero, flavour="tensorrt_rtx"))] == ["unsupported-op"]
    assert errors(lint_model(nonzero, flavour="tensorrt")) == []  # full TensorRT has a NonZero layer
    with pytest.raises(ValueError, match="unknown TensorRT flavour"):
        lint_model(nonzero, flavour="tensorrt_llm")


def test_an_input_name_reused_by_an_output_says_the_input_is_renamed():
    graph = model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y"), tensor("x")])
    [finding] = by_check(lint_model(graph), "io-name-clash")
    assert finding.level == "warning" and "renames the input to '__x'" in finding.message
