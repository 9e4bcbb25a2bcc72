"""rwkv-deploy's CPU operator library: built by the install; its Fp16MatMul is X · Wᵀ in fp32 arithmetic over
fp16 weights, within fp32 rounding of the exact product, and its BlockQuantMatMul is ONNX Runtime's MatMulNBits
(accuracy_level 4) over the same tensors, within fp32 rounding, on every kernel path this machine has (AVX-512,
AVX2, portable C++; RWKV_DEPLOY_CPU_KERNELS caps the choice)."""

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
    assert cpu_ops.library_version() == cpu_ops.VERSION  # built from these sources, not left from older ones


def _fp16_matmul_model(w: np.ndarray, x_width: int | str | None = None):
    """Fp16MatMul over an fp16 `w`, Fp32MatMul over an fp32 one."""
    from onnx import TensorProto, helper, numpy_helper

    m_dim, (n, k) = "m", w.shape
    x_width = k if x_width is None else x_width
    op = "Fp16MatMul" if w.dtype == np.float16 else "Fp32MatMul"
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], domain=cpu_ops.DOMAIN)], "one_product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m_dim, x_width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m_dim, n])], initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(cpu_ops.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def products_within_fp32_rounding(threads: int = 1, weights: str = "float16") -> list[str]:
    """Problems of Fp16MatMul (Fp32MatMul: weights="float32") against float64 on SHAPES (empty: all within
    K·eps32·Σ|x·w|)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    problems = []
    for m, k, n in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.05).astype(weights)
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


# (M, K, N) for the quantized products: decode and batches; K of 1 block, of 16 blocks and more, of a partial
# last block; N under and over a task's 64 rows
QUANT_SHAPES = [(1, 768, 768), (3, 3072, 130), (1, 64, 3072), (16, 800, 96), (2, 40, 7), (5, 544, 65)]
QUANT_FORMATS = [(8, 32), (8, 16), (4, 32)]  # (bits, block_size): int8's layers, every head, int4's layers


def _block_quant_models(w: np.ndarray, bits: int, block: int, x_width: int | str | None = None) -> tuple[bytes, bytes]:
    """The same quantized product as BlockQuantMatMul (weights packed) and as ONNX Runtime's MatMulNBits
    (accuracy_level 4)."""
    from onnx import TensorProto, helper, numpy_helper

    from rwkv_deploy.export.quantize import quantize_matmul_weight
    from rwkv_deploy.targets.cpu.quant_products import pack_weights

    (k, n), blocks = w.shape, -(-w.shape[0] // block)
    parts = quantize_matmul_weight(w, bits, block, symmetric=False)
    b = parts["B"].reshape(n, blocks, -1)
    packed = pack_weights(b, parts["scales"], parts["zero_points"], bits, block) if block in (16, 32) else b
    models = []
    for op, domain, inputs, extra in (
            ("BlockQuantMatMul", cpu_ops.DOMAIN, [numpy_helper.from_array(packed, "w")], {}),
            ("MatMulNBits", "com.microsoft", [numpy_helper.from_array(b, "w"),
                                              numpy_helper.from_array(parts["scales"], "s"),
                                              numpy_helper.from_array(parts["zero_points"], "z")],
             {"K": k, "accuracy_level": 4})):
        graph = helper.make_graph(
            [helper.make_node(op, ["x"] + [t.name for t in inputs], ["y"], domain=domain, bits=bits, block_size=block,
                              N=n, **extra)],
            "one_product", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", x_width or k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], initializer=inputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)])
        model.ir_version = 10
        models.append(model.SerializeToString())
    return models[0], models[1]


def quant_products_match_matmulnbits(threads: int = 1) -> list[str]:
    """Problems of BlockQuantMatMul against MatMulNBits on QUANT_SHAPES x QUANT_FORMATS (empty: every output within
    1e-5 of the largest |output|: the same int8 activations, summed in another order)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    problems = []
    for bits, block in QUANT_FORMATS:
        for m, k, n in QUANT_SHAPES:
            w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
            x = rng.standard_normal((m, k)).astype(np.float32)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.register_custom_ops_library(str(cpu_ops.require_library()))
            ours, theirs = (ort.InferenceSession(model, options).run(None, {"x": x})[0]
                            for model in _block_quant_models(w, bits, block))
            if ours.shape != (m, n) or not np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max():
                problems.append(f"{bits}-bit blocks of {block}, {m}x{k}x{n}: max difference "
                                f"{np.abs(ours - theirs).max():.3g} of {np.abs(theirs).max():.3g}")
    return problems


needs_library = pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")


@needs_library
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", ["float16", "float32"])
def test_products_are_exact_within_fp32_rounding_on_this_machines_kernels(threads: int, weights: str) -> None:
    assert products_within_fp32_rounding(threads, weights) == []


@needs_library
@pytest.mark.parametrize("threads", [1, 2])
def test_quantized_products_are_matmulnbits_on_this_machines_kernels(threads: int) -> None:
    assert cpu_ops.quant_kernel_path() in ("avx512", "avx2", "portable")
    assert quant_products_match_matmulnbits(threads) == []


@needs_library
@pytest.mark.parametrize("cap", ["avx2", "portable"])
@pytest.mark.parametrize("op, check", [("fp16", "products_within_fp32_rounding(2)"),
                                       ("fp32", "products_within_fp32_rounding(2, 'float32')"),
                                       ("quant", "quant_products_match_matmulnbits(2)")])
def test_every_narrower_kernel_path_gives_the_same_products(cap: str, op: str, check: str) -> None:
    path = "quant_kernel_path" if op == "quant" else "kernel_path"
    script = ("from tests.runtime import test_cpu_ops as t\n"
              f"from rwkv_deploy.runtime import cpu_ops\nprint(cpu_ops.{path}(), t.{check})")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RWKV_DEPLOY_CPU_KERNELS": cap}, check=True).stdout.split(None, 1)
    assert out[1].strip() == "[]"
    if cap == "avx2" and getattr(cpu_ops, path)() == "portable":
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


@needs_library
def test_a_quantized_format_without_kernels_is_refused_when_the_session_loads() -> None:
    import onnxruntime as ort

    ours, _ = _block_quant_models(np.zeros((128, 8), np.float32), 8, 64)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    with pytest.raises(Exception, match="8-bit blocks of 16 or 32 values or 4-bit blocks of 32"):
        ort.InferenceSession(ours, options)


@needs_library
def test_quantized_weights_of_the_wrong_shape_are_an_error_not_a_crash() -> None:
    import onnxruntime as ort

    ours, _ = _block_quant_models(np.zeros((64, 8), np.float32), 8, 32, x_width="k")
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    session = ort.InferenceSession(ours, options)
    with pytest.raises(Exception, match="K in the last of W's blocks"):
        session.run(None, {"x": np.zeros((1, 96), np.float32)})
