"""Subprocess entry point for `rwkv_oracle`: runs BlinkDL's `rwkv` package on a job directory.

It runs in its own interpreter because the package reads RWKV_* environment variables at import
time (RWKV_V7_ON even replaces the `RWKV` class), so v7 and v4-v6 cannot share a process. Models
of one family do share it: the package keeps no per-model globals on the CPU fp32 path.

Protocol: `python _rwkv_package_runner.py JOB_DIR`. JOB_DIR/jobs.json holds a list of
{"model": path without ".pth", "version": "4"|"5.0"|"5.1"|"5.2"|"6"|"7",
 "sequences": [[int, ...], ...], "chunks": [int | null, ...]}.
For job j, chunk setting m and sequence i it writes logits_{j}_{m}_{i}.npy ([steps, vocab]
float32) and state_{j}_{m}_{i}.npz (the final state tensors as float32, keys s0000, s0001, ...
in the package's order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# What the package reports as `model.version` for each version string (v7 has its own class).
_PACKAGE_VERSION = {"4": 4.0, "5.0": 5.0, "5.1": 5.1, "5.2": 5.2, "6": 6.0}


def _check_detected_version(model: Any, version: str, model_path: str) -> None:
    """Fail loudly if the package read the checkpoint as another version than the caller meant."""
    if version == "7":
        if not type(model).__name__.startswith("RWKV_x070"):
            raise RuntimeError(f"{model_path}: expected the RWKV_x070 class, got {type(model).__name__}")
        return
    detected = float(model.version)
    if abs(detected - _PACKAGE_VERSION[version]) > 1e-9:
        raise RuntimeError(f"{model_path}: package detected v{detected} but v{version} was requested")


def _pieces(tokens: list[int], chunk: int | None) -> list[list[int]]:
    """One token per call, or `chunk` tokens per call through the multi-token forward."""
    step = 1 if chunk is None else chunk
    return [tokens[j : j + step] for j in range(0, len(tokens), step)]


def _run_sequence(model: Any, tokens: list[int], chunk: int | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fresh state, then feed the pieces carrying the returned state; logits after each piece."""
    state = None
    logits = []
    for piece in _pieces(tokens, chunk):
        out, state = model.forward(piece, state)
        logits.append(out.detach().float().cpu().numpy().copy())
    states = [s.detach().float().cpu().numpy().copy() for s in state]
    return np.stack(logits).astype(np.float32), states


def _run_job(rwkv_class: Any, job: dict[str, Any], j: int, job_dir: Path) -> None:
    model = rwkv_class(job["model"], "cpu fp32")
    _check_detected_version(model, job["version"], job["model"])
    for m, chunk in enumerate(job["chunks"]):
        for i, tokens in enumerate(job["sequences"]):
            logits, states = _run_sequence(model, tokens, chunk)
            np.save(job_dir / f"logits_{j}_{m}_{i}.npy", logits)
            np.savez(job_dir / f"state_{j}_{m}_{i}.npz", **{f"s{k:04d}": s for k, s in enumerate(states)})


def main(job_dir: Path) -> None:
    jobs = json.loads((job_dir / "jobs.json").read_text())
    from rwkv.model import RWKV  # imported here: the parent set RWKV_* env vars for this process

    for j, job in enumerate(jobs):
        _run_job(RWKV, job, j, job_dir)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
