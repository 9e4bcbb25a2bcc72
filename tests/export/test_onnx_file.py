"""Assembling a single ONNX file from external data gives exactly the same model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

from rwkv_deploy.export.onnx_file import inline_external_data


def small_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float16), "w2")
    bias = numpy_helper.from_array(np.arange(8, dtype=np.float32), "bias")  # small: stays inline
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["h16", "w2"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y32", "bias"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], [w1, w2, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_inlined_file_holds_the_same_model(tmp_path):
    model = small_model()
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.data", size_threshold=64)
    onnx.save(model, tmp_path / "ext.onnx")
    assert (tmp_path / "w.data").stat().st_size > 0

    inline_external_data(tmp_path / "ext.onnx", tmp_path / "one.onnx")
    merged = onnx.load(tmp_path / "one.onnx")
    onnx.checker.check_model(merged, full_check=True)
    assert len(merged.graph.initializer) == 3
    got = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    for t in reference.graph.initializer:
        assert got[t.name].dtype == numpy_helper.to_array(t).dtype
        np.testing.assert_array_equal(got[t.name], numpy_helper.to_array(t))
    assert not any(t.external_data for t in merged.graph.initializer)
    assert [n.op_type for n in merged.graph.node] == [n.op_type for n in reference.graph.node]


def test_onnxruntime_runs_the_inlined_file(tmp_path):
    import onnxruntime as ort

    model = small_model()
    x = np.ones((2, 64), dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.data", size_threshold=64)
    onnx.save(model, tmp_path / "ext.onnx")
    inline_external_data(tmp_path / "ext.onnx", tmp_path / "one.onnx")
    got = ort.InferenceSession(str(tmp_path / "one.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)
