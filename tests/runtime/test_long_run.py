"""20,000 steps of the bundled fp32 package (issue 14): the recurrent state carried through ONNX Runtime step by
step stays within 1e-4 of the PyTorch reference and every logit stays finite.

Cheap by construction: the package runs one step per token (the path under test), the reference runs the same
tokens as 40 time-parallel chunks of 500 with its state carried (same recurrence, a fraction of the time), and
logits are compared every 50 steps plus the final state; finiteness is checked at every step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_deploy.models import load_model
from rwkv_deploy.models.bundled import bundled_checkpoint
from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

STEPS = 20_000
EVERY = 50
CHUNK = 500


def stdlib_bytes(count: int) -> np.ndarray:
    """The bundled model's own domain (Python standard-library source), `count` bytes, deterministic."""
    folder = Path(os.__file__).parent
    data = b""
    for name in ("sched.py", "textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py", "heapq.py"):
        data += (folder / name).read_bytes()
    while len(data) < count:
        data += data
    return np.frombuffer(data[:count], dtype=np.uint8).astype(np.int64)


@pytest.mark.slow
def test_twenty_thousand_steps_stay_within_1e4_of_the_reference_and_finite(bundled_pkg):
    tokens = stdlib_bytes(STEPS)
    started = time.perf_counter()
    backend = OnnxStepBackend(DeploymentPackage.open(bundled_pkg), providers=["CPUExecutionProvider"], threads=1)
    state, sampled = backend.fresh_state(1), []
    for step, token in enumerate(tokens):
        logits, state = backend.step(tokens[step:step + 1], state)
        assert np.isfinite(logits).all(), f"non-finite logits at step {step}"
        if step % EVERY == EVERY - 1:
            sampled.append(logits[0])
    onnx_seconds = time.perf_counter() - started

    started = time.perf_counter()
    model = load_model(bundled_checkpoint()).eval()
    reference, ref_state = [], model.init_state(1)
    with torch.no_grad():
        for start in range(0, STEPS, CHUNK):
            chunk = torch.from_numpy(tokens[start:start + CHUNK]).unsqueeze(0)
            logits, ref_state = model(chunk, ref_state)
            reference.append(logits[0, EVERY - 1::EVERY].numpy())
    reference = np.concatenate(reference)
    reference_seconds = time.perf_counter() - started

    sampled = np.stack(sampled)
    logit_error = float(np.abs(sampled - reference).max())
    state_error = max(float((np.abs(a - b.numpy()) / np.maximum(1.0, np.abs(b.numpy()))).max())
                      for a, b in zip(state.numpy().values, ref_state))
    largest_state = max(float(np.abs(v).max()) for v in state.numpy().values)
    print(f"\n20k steps: onnxruntime {onnx_seconds:.1f} s, reference {reference_seconds:.1f} s; max |dlogit| "
          f"{logit_error:.2e} over {len(sampled)} compared steps, state max rel error {state_error:.2e}, "
          f"largest |state| {largest_state:.3g}")
    assert sampled.shape == (STEPS // EVERY, backend.vocab_size)
    assert logit_error <= 1e-4
    assert state_error <= 1e-4
    assert all(np.isfinite(v).all() for v in state.numpy().values)
