"""The CPU step graph: an fp16 graph's Cast -> MatMul -> Cast weight products become Fp16MatMul over the
transposed fp16 weight, the rest of the graph untouched, the function the same; packages with nothing to
rewrite are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rwkv_deploy.package.names import CPU_OPS_DOMAIN as DOMAIN  # noqa: E402
from rwkv_deploy.runtime import cpu_ops  # noqa: E402
from rwkv_deploy.targets.cpu.fp16_products import OP, rewrite_fp16_products  # noqa: E402
from rwkv_deploy.targets.cpu.graph_file import CpuGraphError, write_cpu_graph  # noqa: E402
from tests.helpers.golden import golden_package  # noqa: E402

K, N = 24, 40


def _graph(shared_twice: bool = True) -> onnx.ModelProto:
    """x -> [Cast16 -> MatMul(W16) -> Cast32] -> Relu -> [the same W16 product again] plus an fp32 product."""
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array((rng.standard_normal((K, K)) * 0.1).astype(np.float16), "w16")
    w32 = numpy_helper.from_array((rng.standard_normal((K, N)) * 0.1).astype(np.float32), "w32")
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["x16", "w16"], ["y16"]),
             helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Relu", ["y"], ["r"])]
    if shared_twice:
        nodes += [helper.make_node("Cast", ["r"], ["r16"], to=TensorProto.FLOAT16),
                  helper.make_node("MatMul", ["r16", "w16"], ["z16"]),
                  helper.make_node("Cast", ["z16"], ["z"], to=TensorProto.FLOAT)]
    last = "z" if shared_twice else "r"
    nodes.append(helper.make_node("MatMul", [last, "w32"], ["out"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", N])],
                              initializer=[w16, w32])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_each_fp16_product_becomes_one_operator_and_the_fp32_one_stays() -> None:
    model, count = rewrite_fp16_products(_graph())
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert count == 2
    assert ops.count((DOMAIN, OP)) == 2 and ("", "Cast") not in ops and ops.count(("", "MatMul")) == 1
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert weights == {"w16.rows": (K, K), "w32": (K, N)}  # one transposed copy for both products, w16 gone
    assert any(o.domain == DOMAIN for o in model.opset_import)


@pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")
def test_the_rewritten_graph_computes_the_same_function() -> None:
    import onnxruntime as ort

    model = _graph()
    rewritten, _ = rewrite_fp16_products(model)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    (portable,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    (ours,) = ort.InferenceSession(rewritten.SerializeToString(), options).run(None, {"x": x})
    # the portable graph rounds each product's input and output to fp16; ours keeps fp32: fp16 rounding apart
    np.testing.assert_allclose(ours, portable, rtol=0, atol=4e-3 * np.abs(portable).max())


def test_a_product_whose_pattern_differs_is_left_alone() -> None:
    model = _graph(shared_twice=False)
    model.graph.node[2].attribute[0].i = TensorProto.DOUBLE  # the product's result is not cast back to float
    rewritten, count = rewrite_fp16_products(model)
    assert count == 0 and [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


def test_a_package_with_nothing_for_the_operators_is_refused_in_one_line(tmp_path) -> None:
    """An fp32 package keeps ONNX Runtime's products; RWKV-4 has no time-mix core to fuse, and mixes its token
    shift as x * mix + shift * (1 - mix)."""
    with pytest.raises(CpuGraphError, match=r"v4-fp32/.*\.onnx: no RWKV-7 time-mix core and no token shift x \+ "
                                            r"\(shift - x\) \* mix \(an fp32 package's CPU graph fuses those only\) found"):
        write_cpu_graph(golden_package("v4-fp32"), tmp_path / "step.cpu.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_graph_is_not_written_through_a_link(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "step.cpu.onnx").symlink_to(target)
    with pytest.raises(CpuGraphError, match="symbolic link"):
        write_cpu_graph(golden_package("v7-fp32"), tmp_path / "step.cpu.onnx")
    assert not target.exists()
