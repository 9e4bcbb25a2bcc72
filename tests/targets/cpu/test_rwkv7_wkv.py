"""The RWKV-7 time-mix fusion of CPU step graphs: each layer's core becomes one Rwkv7WkvStep, the step computes the
portable graph's logits and state within fp32 rounding (decode and batch), other versions and a layer that
differs from the pattern are left as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops
from tests.helpers.small_packages import shared

onnx = pytest.importorskip("onnx")
from rwkv_deploy.targets.cpu.rwkv7_wkv import OP, rewrite_rwkv7_wkv  # noqa: E402

pytestmark = pytest.mark.slow  # exports small packages


def _step_graph(package_dir) -> onnx.ModelProto:
    manifest = json.loads((package_dir / "manifest.json").read_text())
    return onnx.load(str(package_dir / manifest["graphs"]["step"]["path"]))


def test_each_layers_core_becomes_one_operator(shared_package) -> None:
    model = _step_graph(shared(shared_package, "7", "fp32"))
    fused, count = rewrite_rwkv7_wkv(model)
    ops = [n.op_type for n in fused.graph.node]
    assert count == 2 and ops.count(OP) == 2  # two layers
    assert len(model.graph.node) - len(fused.graph.node) >= 2 * 40  # about 45 nodes per layer
    assert [o.name for o in fused.graph.output] == [o.name for o in model.graph.output]
    assert len(model.graph.node) > len(fused.graph.node)  # the source is left as it was


@pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")
@pytest.mark.parametrize("batch", [1, 3])
def test_the_fused_step_gives_the_portable_logits_and_state(shared_package, batch) -> None:
    import onnxruntime as ort

    from rwkv_deploy.runtime import DeploymentPackage

    package_dir = shared(shared_package, "7", "fp32")
    package = DeploymentPackage.open(package_dir)
    model = _step_graph(package_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    portable = ort.InferenceSession(model.SerializeToString(), options)
    fused = ort.InferenceSession(rewrite_rwkv7_wkv(model)[0].SerializeToString(), options)
    names = [e.input for e in package.manifest.state]
    state = list(package.fresh_state(batch).values)
    rng = np.random.default_rng(0)
    for _ in range(6):  # the same state into both each step: every output within fp32 rounding of the portable's
        feeds = {package.manifest.token_input: rng.integers(0, 256, batch), **dict(zip(names, state))}
        want, got = portable.run(None, feeds), fused.run(None, feeds)
        for a, b in zip(want, got):
            assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1.0)
        state = want[1:]


def test_other_versions_are_left_as_they_were(shared_package) -> None:
    model = _step_graph(shared(shared_package, "6", "fp32"))
    fused, count = rewrite_rwkv7_wkv(model)
    assert count == 0 and [n.op_type for n in fused.graph.node] == [n.op_type for n in model.graph.node]


def test_a_layer_that_differs_from_the_pattern_keeps_its_nodes(shared_package) -> None:
    """k' = k * (1 + (a - 1) * k_a) with another constant than 1 is not the operator's formula."""
    from onnx import numpy_helper

    model = _step_graph(shared(shared_package, "7", "fp32"))
    layer1 = next(n for n in model.graph.node if n.op_type == "Sub" and "blocks.1" in str(n.metadata_props)
                  and any(i.name == n.input[1] and numpy_helper.to_array(i).size == 1 for i in model.graph.initializer))
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "not_one"))
    layer1.input[1] = "not_one"
    fused, count = rewrite_rwkv7_wkv(model)
    assert count == 1
    assert [n.op_type for n in fused.graph.node].count(OP) == 1
