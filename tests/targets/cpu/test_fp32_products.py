"""The CPU step graph's fp32 weight products: MatMul over an fp32 initializer becomes Fp32MatMul over the
transposed weight; a product of two activations stays; the function is the same within fp32 rounding."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rwkv_deploy.package.names import CPU_OPS_DOMAIN as DOMAIN  # noqa: E402
from rwkv_deploy.runtime import cpu_ops  # noqa: E402
from rwkv_deploy.targets.cpu.fp32_products import OP, rewrite_fp32_products  # noqa: E402

K, N = 40, 24


def _graph() -> onnx.ModelProto:
    """x -> MatMul(W [K, N]) -> Relu -> MatMul(V [N, K]) -> y, then y . yᵀ (a product of two activations)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((K, N)) * 0.1).astype(np.float32), "w")
    v = numpy_helper.from_array((rng.standard_normal((N, K)) * 0.1).astype(np.float32), "v")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "v"], ["y"]), helper.make_node("Transpose", ["y"], ["yt"]),
             helper.make_node("MatMul", ["y", "yt"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 3])], initializer=[w, v])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_each_weight_product_becomes_one_operator_and_the_activation_product_stays() -> None:
    model, count = rewrite_fp32_products(_graph())
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert count == 2 and ops.count((DOMAIN, OP)) == 2 and ops.count(("", "MatMul")) == 1
    assert {t.name: tuple(t.dims) for t in model.graph.initializer} == {"w.rows": (N, K), "v.rows": (K, N)}
    assert any(o.domain == DOMAIN for o in model.opset_import)


@pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")
def test_the_rewritten_graph_computes_the_same_function() -> None:
    import onnxruntime as ort

    model = _graph()
    rewritten, _ = rewrite_fp32_products(model)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    (portable,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    (ours,) = ort.InferenceSession(rewritten.SerializeToString(), options).run(None, {"x": x})
    np.testing.assert_allclose(ours, portable, rtol=1e-5, atol=1e-6 * np.abs(portable).max())
