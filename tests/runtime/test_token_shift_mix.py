"""rwkv-deploy's TokenShiftMix operator: the new shift state and x + (shift - x) * mix for each mix, bit for bit
what numpy computes in fp32 in the same order; a mix of another width is an error, not a crash."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops

pytestmark = pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")


def _session(mixes: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    names = [f"mix{i}" for i in range(mixes)]
    outputs = ["new_shift", *(f"y{i}" for i in range(mixes))]
    graph = helper.make_graph(
        [helper.make_node("TokenShiftMix", ["x", "shift", *names], outputs, domain=cpu_ops.DOMAIN)], "shift",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "c"]),
         helper.make_tensor_value_info("shift", TensorProto.FLOAT, ["b", "c"]),
         *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"c_{n}"]) for n in names)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(cpu_ops.DOMAIN, cpu_ops.VERSION)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    return ort.InferenceSession(model.SerializeToString(), options)


@pytest.mark.parametrize("batch, mixes", [(1, 6), (3, 1)])
def test_every_mix_and_the_new_shift_are_numpys_bit_for_bit(batch, mixes) -> None:
    rng = np.random.default_rng(0)
    x, shift = rng.standard_normal((batch, 1, 37), np.float32), rng.standard_normal((batch, 37), np.float32)
    mix = [rng.random(37, np.float32) for _ in range(mixes)]
    new_shift, *ys = _session(mixes).run(None, {"x": x, "shift": shift, **{f"mix{i}": m for i, m in enumerate(mix)}})
    assert np.array_equal(new_shift, x[:, 0])
    for y, m in zip(ys, mix):
        assert y.shape == x.shape and np.array_equal(y, x + (shift[:, None] - x) * m)


def test_a_mix_of_another_width_is_an_error_not_a_crash() -> None:
    x, shift = np.zeros((2, 1, 8), np.float32), np.zeros((2, 8), np.float32)
    with pytest.raises(Exception, match="each mix must hold C values"):
        _session(2).run(None, {"x": x, "shift": shift, "mix0": np.zeros(8, np.float32), "mix1": np.zeros(7, np.float32)})
