"""What ONNX Runtime's CPU kernels give one weight matrix: GFLOP/s of MatMul (fp32) and MatMulNBits (8 and 4 bits,
accuracy levels 1 and 4) at M=1 (a decode step), M=16 (a batch-16 step) and M=64 (a prefill chunk); three separate K x K decode products
against one product of 3 stacked rows with the three weights side by side (how RWKV-7's r/k/v could be merged);
and whether an fp16 MatMul runs in fp16 on this CPU or is cast to fp32 at session start.

    python scripts/ort_kernels.py [--k 768] [--n 3072] [--threads 1]

One-node graphs with random weights, 5 repetitions of 20 runs, median. These bound what a graph change can buy:
the prefill and batch-16 targets of issue 13 meet them (docs/bench.md, "What the kernels allow").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def matmul_model(k: int, n: int, m: int, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weight = numpy_helper.from_array((np.random.rand(k, n) * 0.01).astype(np_type), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", dtype, [1, m, k])],
                              [helper.make_tensor_value_info("y", dtype, [1, m, n])], [weight])
    return helper.make_model(graph, opset_imports=OPSETS[:1])


def nbits_model(k: int, n: int, m: int, bits: int, accuracy_level: int, block: int = 32) -> onnx.ModelProto:
    blocks = k // block
    packed = np.random.randint(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (np.random.rand(n * blocks) * 0.01).astype(np.float32)
    zero_points = np.full(n * ((blocks * bits + 7) // 8), 0x88 if bits == 4 else 128, np.uint8)
    inits = [numpy_helper.from_array(a, name) for a, name in ((packed, "q"), (scales, "s"), (zero_points, "z"))]
    node = helper.make_node("MatMulNBits", ["x", "q", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])], inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def projections_model(k: int, stacked: bool, bits: int | None, layers: int = 12) -> onnx.ModelProto:
    """`layers` x three K x K products of one [1, 1, K] row each, or `layers` products of 3 rows x 3K columns."""
    nodes, inits, outputs = [], [], []
    rows = 3 if stacked else 1
    for layer in range(layers):
        for part in range(1 if stacked else 3):
            n = 3 * k if stacked else k
            one = nbits_model(k, n, rows, bits, 4) if bits else matmul_model(k, n, rows)
            suffix = f"{layer}_{part}"
            for init in one.graph.initializer:
                init.name += suffix
                inits.append(init)
            node = one.graph.node[0]
            node.input[1:] = [name + suffix for name in node.input[1:]]
            node.output[0] = f"y{suffix}"
            nodes.append(node)
            outputs.append(helper.make_tensor_value_info(f"y{suffix}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def milliseconds(model: onnx.ModelProto, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    feeds = {"x": np.random.rand(*shape).astype(helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type))}
    for _ in range(5):
        s.run(None, feeds)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            s.run(None, feeds)
        times.append((time.perf_counter() - started) / 20 * 1000)
    return statistics.median(times)


def fp16_runs_as(k: int, n: int) -> str:
    """The weight type ONNX Runtime's optimized graph of a one-node fp16 MatMul holds on this CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(matmul_model(k, n, 1, TensorProto.FLOAT16).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    ops = [node.op_type for node in optimized.graph.node]
    weights = {TensorProto.DataType.Name(i.data_type) for i in optimized.graph.initializer}
    return f"nodes {ops}, weight stored as {sorted(weights)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=768)
    parser.add_argument("--n", type=int, default=3072)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    k, n = args.k, args.n
    print(f"onnxruntime {ort.__version__}, K={k} N={n}, {args.threads} thread(s)")
    for m in (1, 16, 64):
        cases = {"MatMul fp32": matmul_model(k, n, m)}
        for bits in (8, 4):
            for level in (4, 1):
                cases[f"MatMulNBits {bits}-bit, accuracy_level {level}"] = nbits_model(k, n, m, bits, level)
        for name, model in cases.items():
            ms = milliseconds(model, args.threads)
            print(f"  M={m:<3d} {name:38s} {ms:8.3f} ms  {2 * k * n * m / ms / 1e6:7.1f} GFLOP/s")
    for bits in (None, 8):
        kind = f"MatMulNBits {bits}-bit" if bits else "MatMul fp32"
        separate, stacked = (milliseconds(projections_model(k, s, bits), args.threads) for s in (False, True))
        print(f"  12 x r/k/v, {kind}: 36 separate {k}x{k} products {separate:.3f} ms, 12 stacked 3-row "
              f"{k}x{3 * k} products {stacked:.3f} ms")
    print(f"fp16 MatMul after session start: {fp16_runs_as(k, n)}")


if __name__ == "__main__":
    main()
