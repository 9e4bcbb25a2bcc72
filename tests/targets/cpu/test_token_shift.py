"""The token-shift fusion of CPU step graphs: each block's x + (shift - x) * mix nodes and its new shift state
become one TokenShiftMix, bit-identical to the portable graph (decode and batch); blocks mixed another way, and a
block whose nodes differ from the pattern, are left as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops
from tests.helpers.small_packages import shared

onnx = pytest.importorskip("onnx")
from rwkv_deploy.targets.cpu.token_shift import OP, rewrite_token_shifts  # noqa: E402

pytestmark = pytest.mark.slow  # exports small packages


def _step_graph(package_dir) -> onnx.ModelProto:
    manifest = json.loads((package_dir / "manifest.json").read_text())
    return onnx.load(str(package_dir / manifest["graphs"]["step"]["path"]))


# blocks fused in a 2-layer package: RWKV-7 both blocks of each layer; RWKV-6 its channel mix (its time mix is
# data-dependent); RWKV-4 and 5.2 mix as x * mix + shift * (1 - mix)
@pytest.mark.parametrize("version, blocks", [("7", 4), ("6", 2), ("5.2", 0), ("4", 0)])
def test_each_blocks_token_shift_becomes_one_operator(shared_package, version, blocks) -> None:
    model = _step_graph(shared(shared_package, version, "fp32"))
    fused, count = rewrite_token_shifts(model)
    assert count == blocks and [n.op_type for n in fused.graph.node].count(OP) == blocks
    assert len(model.graph.node) - len(fused.graph.node) == sum(
        3 + 2 * (len(n.input) - 2) - 1 for n in fused.graph.node if n.op_type == OP)


@pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")
@pytest.mark.parametrize("version, batch", [("7", 1), ("7", 3), ("6", 2)])
def test_the_fused_step_is_bit_identical_to_the_portable_one(shared_package, version, batch) -> None:
    import onnxruntime as ort

    from rwkv_deploy.runtime import DeploymentPackage

    package_dir = shared(shared_package, version, "fp32")
    package = DeploymentPackage.open(package_dir)
    model = _step_graph(package_dir)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    portable = ort.InferenceSession(model.SerializeToString(), options)
    fused = ort.InferenceSession(rewrite_token_shifts(model)[0].SerializeToString(), options)
    names = [e.input for e in package.manifest.state]
    state = list(package.fresh_state(batch).values)
    rng = np.random.default_rng(0)
    for _ in range(4):
        feeds = {package.manifest.token_input: rng.integers(0, 256, batch), **dict(zip(names, state))}
        want, got = portable.run(None, feeds), fused.run(None, feeds)
        assert all(np.array_equal(a, b) for a, b in zip(want, got))
        state = want[1:]


def test_a_block_whose_difference_is_read_elsewhere_keeps_its_nodes(shared_package) -> None:
    from onnx import helper

    model = _step_graph(shared(shared_package, "7", "fp32"))
    sub = next(n for n in model.graph.node if n.op_type == "Sub" and n.input[0].startswith("unsqueeze"))
    model.graph.node.append(helper.make_node("Relu", [sub.output[0]], ["also_reads_the_difference"]))
    model.graph.output.append(helper.make_tensor_value_info("also_reads_the_difference", onnx.TensorProto.FLOAT,
                                                            None))
    fused, count = rewrite_token_shifts(model)
    assert count == 3 and sub.output[0] in {o for n in fused.graph.node for o in n.output}
