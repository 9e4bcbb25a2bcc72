"""How ONNX Runtime's thread settings change one package's decode step, on a quiet machine and beside busy processes.

    python scripts/ort_threading.py PACKAGE [--steps 30] [--rounds 5] [--busy N]

Plain ONNX Runtime sessions on the package's step graph (batch 1, zero state), one per configuration, measured in
interleaved rounds with the order reversed each round; prints ms per step (median, min). `--busy N` keeps N
busy-looping processes running during the measurement, as a shared server would. Figures in docs/bench.md
("Spin-waiting threads").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rwkv_deploy.runtime.onnx_backend import session_options

CONFIGS = {  # name: (execution mode, intra-op threads, inter-op threads, spin-waiting)
    "1 thread": ("sequential", 1, 1, False),
    "2 threads, no spinning (runtime default)": ("sequential", 2, 1, False),
    "2 threads, spinning (spin_wait=True)": ("sequential", 2, 1, True),
    "parallel executor, 2 inter-op x 1 intra-op": ("parallel", 1, 2, False),
}


def session(graph: Path, mode: str, intra: int, inter: int, spin: bool) -> ort.InferenceSession:
    options = session_options(intra, spin)  # the runtime's own settings, then the parallel executor if asked
    if mode == "parallel":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = inter
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def zero_feeds(s: ort.InferenceSession, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero tokens and a zero state for a step graph's session, its dynamic (batch) axes at `batch`."""
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        dtype = np.int64 if "int64" in i.type else np.int32 if "int32" in i.type else np.float32
        feeds[i.name] = np.zeros(shape, dtype)
    return feeds


def busy_loop() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes during the measurement")
    args = parser.parse_args()
    manifest = json.loads((args.package / "manifest.json").read_text())
    graph = args.package / manifest["graphs"]["step"]["path"]
    sessions = {name: session(graph, *config) for name, config in CONFIGS.items()}
    feeds = zero_feeds(next(iter(sessions.values())))
    hogs = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for hog in hogs:
        hog.start()
    times: dict[str, list[float]] = {name: [] for name in sessions}
    try:
        for round_ in range(args.rounds):
            for name in (list(sessions) if round_ % 2 == 0 else list(sessions)[::-1]):
                s = sessions[name]
                for _ in range(3):
                    s.run(None, feeds)
                started = time.perf_counter()
                for _ in range(args.steps):
                    s.run(None, feeds)
                times[name].append((time.perf_counter() - started) / args.steps * 1000)
    finally:
        for hog in hogs:
            hog.terminate()
    print(f"{graph.name}, {args.busy} busy process(es), {args.rounds} rounds x {args.steps} steps")
    for name, values in times.items():
        print(f"  {name:45s} {statistics.median(values):6.2f} ms/step median, {min(values):6.2f} min")


if __name__ == "__main__":
    main()
