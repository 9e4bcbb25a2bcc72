"""rwkv-deploy's CPU operator library: built by the install, and its Fp16MatMul is X · Wᵀ in fp32 arithmetic over
fp16 weights, within fp32 rounding of the exact product, on every kernel path this machine has (AVX-512,
AVX2+F16C, portable C++; RWKV_DEPLOY_CPU_KERNELS caps the choice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops

ROOT = Path(__file__).resolve().parents[2]
VENDORED_HEADER = ROOT.parent / "shared/vendor/onnxruntime-c-api/onnxruntime_c_api.h"
# (M, K, N): decode, batches of 4 and 16 with remainders, K not a multiple of any vector width, tiny
SHAPES = [(1, 768, 768), (1, 64, 3072), (4, 37, 13), (16, 768, 1000), (5, 3072, 768), (7, 33, 7), (1, 16, 4), (2, 5, 3)]


def test_the_install_built_the_library_when_the_header_was_there() -> None:
    if not VENDORED_HEADER.is_file() and not os.environ.get("ONNXRUNTIME_C_API_INCLUDE"):
        pytest.skip("no ONNX Runtime C API header beside this checkout: the install builds no CPU operators")
    assert cpu_ops.library_path() is not None
    assert cpu_ops.kernel_path() in ("avx512", "avx2", "portable")


def _fp16_matmul_model(w: np.ndarray, x_width: int | str | None = None):
    from onnx import TensorProto, helper, numpy_helper

    m_dim, (n, k) = "m", w.shape
    x_width = k if x_width is None else x_width
    graph = helper.make_graph(
        [helper.make_node("Fp16MatMul", ["x", "w"], ["y"], domain=cpu_ops.DOMAIN)], "one_product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m_dim, x_width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m_dim, n])], initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(cpu_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def products_within_fp32_rounding(threads: int = 1) -> list[str]:
    """Problems of Fp16MatMul against float64 on SHAPES (empty: all within K·eps32·Σ|x·w|)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    problems = []
    for m, k, n in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
        x = rng.standard_normal((m, k)).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.register_custom_ops_library(str(cpu_ops.require_library()))
        (y,) = ort.InferenceSession(_fp16_matmul_model(w), options).run(None, {"x": x})
        exact = x.astype(np.float64) @ w.astype(np.float64).T
        bound = (np.abs(x).astype(np.float64) @ np.abs(w.astype(np.float64)).T) * k * np.finfo(np.float32).eps
        if y.shape != (m, n) or not (np.abs(y - exact) <= bound).all():
            problems.append(f"{m}x{k}x{n}: max error {np.abs(y - exact).max():.3g}")
    return problems


needs_library = pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")


@needs_library
@pytest.mark.parametrize("threads", [1, 2])
def test_products_are_exact_within_fp32_rounding_on_this_machines_kernels(threads: int) -> None:
    assert products_within_fp32_rounding(threads) == []


@needs_library
@pytest.mark.parametrize("cap", ["avx2", "portable"])
def test_every_narrower_kernel_path_gives_the_same_products(cap: str) -> None:
    script = ("from tests.runtime.test_cpu_ops import products_within_fp32_rounding as check\n"
              "from rwkv_deploy.runtime import cpu_ops\nprint(cpu_ops.kernel_path(), check(2))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RWKV_DEPLOY_CPU_KERNELS": cap}, check=True).stdout.split(None, 1)
    assert out[1].strip() == "[]"
    if cap == "avx2" and cpu_ops.kernel_path() == "portable":
        assert out[0] == "portable"  # a CPU without AVX2 falls back
    else:
        assert out[0] == cap


@needs_library
def test_a_weight_of_another_width_is_an_error_not_a_crash() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    session = ort.InferenceSession(_fp16_matmul_model(np.zeros((4, 8), np.float16), x_width="k"), options)
    with pytest.raises(Exception, match="must agree on K"):
        session.run(None, {"x": np.zeros((1, 9), np.float32)})
