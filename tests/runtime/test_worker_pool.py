"""The CPU operators' own workers (runtime/native/worker_pool.cc): a CPU graph steps to the same bits on any
number of them (each task is computed the same way whoever runs it), two sessions stepping at once both get their
own results, and a process forked while they run still steps (a child has none of the threads)."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from rwkv_deploy.runtime import cpu_ops
from tests.helpers.small_packages import shared

pytestmark = [pytest.mark.slow,  # exports a small package
              pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")]
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def cpu_graph(shared_package, tmp_path_factory):
    """(the package, its int8 CPU step graph in a work folder)."""
    from rwkv_deploy.targets.cpu.graph_file import write_cpu_graph

    package_dir = shared(shared_package, "7", "int8")
    return package_dir, write_cpu_graph(package_dir, tmp_path_factory.mktemp("pool") / "step.cpu.onnx").path


def _steps(package_dir, graph, batch: int = 3, steps: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Every output of `steps` steps of a fresh session (ONNX Runtime at 2 threads, sleeping)."""
    import onnxruntime as ort

    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.onnx_backend import session_options

    package = DeploymentPackage.open(package_dir)
    options = session_options(2)
    options.register_custom_ops_library(str(cpu_ops.require_library()))
    session = ort.InferenceSession(str(graph), options)
    names = [e.input for e in package.manifest.state]
    state, rng, seen = list(package.fresh_state(batch).values), np.random.default_rng(seed), []
    for _ in range(steps):
        out = session.run(None, {package.manifest.token_input: rng.integers(0, 256, batch), **dict(zip(names, state))})
        seen += out
        state = out[1:]
    return seen


def test_any_number_of_workers_steps_to_the_same_bits(cpu_graph) -> None:
    try:
        cpu_ops.start_workers(1)  # none: ONNX Runtime's pool
        alone = _steps(*cpu_graph)
        for threads in (2, 4):
            cpu_ops.start_workers(threads)
            assert all(np.array_equal(a, b) for a, b in zip(alone, _steps(*cpu_graph)))
    finally:
        cpu_ops.start_workers(None)


def test_two_sessions_stepping_at_once_each_get_their_own_results(cpu_graph) -> None:
    cpu_ops.start_workers(2)
    want = [_steps(*cpu_graph, seed=seed) for seed in (1, 2)]
    got: dict[int, list[np.ndarray]] = {}
    threads = [threading.Thread(target=lambda s=seed: got.__setitem__(s, _steps(*cpu_graph, steps=20, seed=s)))
               for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for seed, expected in zip((1, 2), want):
        assert all(np.array_equal(a, b) for a, b in zip(expected, got[seed]))


def _child(package_dir, graph, queue) -> None:
    queue.put(_steps(package_dir, graph)[0])


def test_a_process_forked_while_the_workers_run_still_steps(cpu_graph) -> None:
    cpu_ops.start_workers(2)
    want = _steps(*cpu_graph)[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(*cpu_graph, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and np.array_equal(got, want)
