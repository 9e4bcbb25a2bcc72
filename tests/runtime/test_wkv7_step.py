"""rwkv-deploy's Rwkv7WkvStep operator against the RWKV-7 step written out in numpy (models/reference/v7.py's
math), within fp32 rounding, on every kernel path this machine has; and its shape errors are errors, not crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops

ROOT = Path(__file__).resolve().parents[2]
DECAY_SCALE, NORM_FLOOR, EPS = -float(np.exp(-0.5)), 1e-12, 64e-5
# (rows, heads, head size): decode, a batch (run in parallel), head sizes off every vector width, RWKV-7's 64
SHAPES = [(1, 3, 12), (3, 3, 12), (1, 2, 64), (5, 2, 64), (2, 4, 20)]
needs_library = pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")


def reference(state, r, w_hat, k, v, a, k_k, k_a, r_k, ln_w, ln_b):
    """y and the new state, in float64, straight from the formulas."""
    rows, heads, n, _ = state.shape
    r, w_hat, k, v, a = (t.astype(np.float64).reshape(rows, heads, n) for t in (r, w_hat, k, v, a))
    k_k, k_a, r_k, ln_w, ln_b = (t.astype(np.float64).reshape(heads, n) for t in (k_k, k_a, r_k, ln_w, ln_b))
    kk = k * k_k
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), NORM_FLOOR)
    k_prime = k * (1 + (a - 1) * k_a)
    w = np.exp(DECAY_SCALE / (1 + np.exp(-w_hat)))
    s = state.astype(np.float64)
    new = s * w[:, :, None, :] + (s @ -kk[..., None]) @ (kk * a)[:, :, None, :] + v[..., None] * k_prime[:, :, None, :]
    y = (new @ r[..., None])[..., 0]
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + EPS) * ln_w + ln_b
    y = y + (r * k_prime * r_k).sum(-1, keepdims=True) * v
    return y.reshape(rows, 1, heads * n), new


def _model() -> bytes:
    """One Rwkv7WkvStep over inputs of any size (the operator checks them)."""
    from onnx import TensorProto, helper

    names = ["state", "r", "w_hat", "k", "v", "a", "k_k", "k_a", "r_k", "ln_w", "ln_b"]
    shapes = [["b", "h", "n", "m"]] + [["b", 1, "c"]] * 5 + [[f"c{i}"] for i in range(5)]
    graph = helper.make_graph(
        [helper.make_node("Rwkv7WkvStep", names, ["y", "state_out"], domain=cpu_ops.DOMAIN, decay_scale=DECAY_SCALE,
                          norm_floor=NORM_FLOOR, epsilon=EPS)], "wkv7",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in zip(names, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(cpu_ops.DOMAIN, cpu_ops.VERSION)])
    model.ir_version = 10
    return model.SerializeToString()


def _inputs(rows: int, heads: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = heads * n
    vec = lambda *shape, scale=1.0, shift=0.0: (rng.standard_normal(shape) * scale + shift).astype(np.float32)  # noqa
    return {"state": vec(rows, heads, n, n, scale=0.5), "r": vec(rows, 1, c), "w_hat": vec(rows, 1, c, scale=2.0),
            "k": vec(rows, 1, c), "v": vec(rows, 1, c),
            "a": (1 / (1 + np.exp(-vec(rows, 1, c)))).astype(np.float32), "k_k": vec(c, scale=0.3, shift=0.8),
            "k_a": vec(c, scale=0.3, shift=1.0), "r_k": vec(c, scale=0.3), "ln_w": vec(c, scale=0.2, shift=1.0),
            "ln_b": vec(c, scale=0.1)}


def steps_match_reference(threads: int) -> list[str]:
    """Problems found running the operator on every shape (empty when all match)."""
    import onnxruntime as ort

    problems = []
    for rows, heads, n in SHAPES:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.register_custom_ops_library(str(cpu_ops.require_library()))
        feeds = _inputs(rows, heads, n)
        y, state = ort.InferenceSession(_model(), options).run(None, feeds)
        want_y, want_state = reference(*feeds.values())
        for name, ours, theirs in (("y", y, want_y), ("state", state, want_state)):
            error = np.abs(ours - theirs).max() / np.abs(theirs).max()
            if ours.shape != theirs.shape or not error <= 2e-6:
                problems.append(f"{rows}x{heads}x{n} {name}: relative error {error:.3g}")
    return problems


@needs_library
@pytest.mark.parametrize("threads", [1, 2])
def test_the_step_is_the_formulas_within_fp32_rounding_on_this_machines_kernels(threads: int) -> None:
    assert steps_match_reference(threads) == []


@needs_library
@pytest.mark.parametrize("cap", ["avx2", "portable"])
def test_every_narrower_kernel_path_gives_the_same_step(cap: str) -> None:
    script = "from tests.runtime import test_wkv7_step as t\nprint(t.steps_match_reference(2))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RWKV_DEPLOY_CPU_KERNELS": cap}, check=True).stdout
    assert out.strip() == "[]"


@needs_library
def test_a_state_that_is_not_square_per_head_is_an_error_not_a_crash() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    feeds = _inputs(1, 3, 12)
    feeds["state"] = feeds["state"][..., :11].copy()
    with pytest.raises(Exception, match=r"the state must be \[B, H, N, N\]"):
        ort.InferenceSession(_model(), options).run(None, feeds)


@needs_library
def test_per_channel_inputs_of_another_width_are_an_error_not_a_crash() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    feeds = _inputs(2, 3, 12)
    feeds["r_k"] = feeds["r_k"][:-1].copy()
    with pytest.raises(Exception, match="hold C values"):
        ort.InferenceSession(_model(), options).run(None, feeds)
