"""What the machine can do, measured the same way every run: memory read bandwidth, and which bytes a
decode step must read, so decode speed can be put against the memory roof."""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

GATHER_OPS = {"Gather", "GatherBlockQuantized"}  # embedding lookups read one row per token, not the table


def memory_read_bandwidth(threads: int, megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second for reading a `megabytes` array (far beyond any cache), split over `threads`
    threads (numpy's sum releases the GIL); the best of `repeats` full passes."""
    data = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def decode_weight_bytes(graph_path: Path) -> int:
    """Bytes of weights one decode step reads: every initializer of the step graph except the tables that
    are only gathered from (the embedding: one row per token)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(graph_path), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type in GATHER_OPS}
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name in gathered:
            continue
        if uses_external_data(tensor):
            total += int({e.key: e.value for e in tensor.external_data}["length"])
        else:
            total += len(tensor.raw_data) or onnx.numpy_helper.to_array(tensor).nbytes
    return total


def describe() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
