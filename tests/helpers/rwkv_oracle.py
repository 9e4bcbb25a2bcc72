"""Oracle: logits and states from BlinkDL's `rwkv` package (0.8.32), run in a subprocess.

Every call starts a fresh interpreter per version family, with RWKV_JIT_ON=0, RWKV_CUDA_ON=0,
RWKV_RESCALE_LAYER=0, RWKV_V7_ON=1 only for v7, and strategy "cpu fp32". The families are v4-v6
and v7. The package configures itself from environment variables at import time, so an
in-process import would pin one family for the whole test session. Data travels through
.npy/.npz files in a temporary directory. stdout is full of the package's loading chatter and is
not parsed. Interpreter + torch start-up (~3 s) dominates small runs: batch work with
`run_rwkv_package_jobs` when a test needs several checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

VERSIONS: tuple[str, ...] = ("4", "5.0", "5.1", "5.2", "6", "7")
_RUNNER = Path(__file__).with_name("_rwkv_package_runner.py")
_DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class PackageRun:
    """Result for one sequence: logits after each step and the final state (package order).

    State order is per layer i: v4 [att_xx, aa, bb, pp, ffn_xx] at i*5+0..4; v5/v6/v7
    [att_xx, wkv S [H,N,N], ffn_xx] at i*3+0..2. v5/v6 S is S[h, key, value]; v7 S is S[h, value, key].
    """

    logits: np.ndarray
    state: list[np.ndarray]


@dataclass(frozen=True)
class OracleJob:
    """One checkpoint, run on every sequence once per chunk setting (None = one token per call)."""

    checkpoint_path: Path
    version: str
    sequences: list[list[int]]
    chunks: tuple[int | None, ...] = (None,)


def run_rwkv_package(
    checkpoint_path: Path, version: str, sequences: list[list[int]], *, chunk: int | None = None
) -> list[np.ndarray]:
    """Per sequence, float32 logits [T, vocab] after each token (or [n_chunks, vocab] after each chunk)."""
    return [run.logits for run in run_rwkv_package_full(checkpoint_path, version, sequences, chunk=chunk)]


def run_rwkv_package_states(
    checkpoint_path: Path, version: str, sequences: list[list[int]], *, chunk: int | None = None
) -> list[list[np.ndarray]]:
    """Per sequence, the package's final state tensors (float32, package order)."""
    return [run.state for run in run_rwkv_package_full(checkpoint_path, version, sequences, chunk=chunk)]


def run_rwkv_package_full(
    checkpoint_path: Path, version: str, sequences: list[list[int]], *, chunk: int | None = None
) -> list[PackageRun]:
    """Logits and final state per sequence; each sequence starts from a fresh state."""
    job = OracleJob(Path(checkpoint_path), version, sequences, (chunk,))
    return run_rwkv_package_jobs([job])[0][0]


def run_rwkv_package_jobs(
    jobs: Sequence[OracleJob], *, timeout_s: float = _DEFAULT_TIMEOUT_S
) -> list[list[list[PackageRun]]]:
    """Run several checkpoints with at most one subprocess per family; result [job][chunk setting][sequence].

    Raises RuntimeError (with the subprocess's stderr) if the package fails or detects a different
    version than a job's `version`.
    """
    for job in jobs:
        _validate(job)
    results: list[list[list[PackageRun]] | None] = [None] * len(jobs)
    for family in sorted({_family(job.version) for job in jobs}):
        indices = [k for k, job in enumerate(jobs) if _family(job.version) == family]
        for k, runs in zip(indices, _run_family([jobs[k] for k in indices], family, timeout_s)):
            results[k] = runs
    return [runs for runs in results if runs is not None]


def package_env(version: str) -> dict[str, str]:
    """Environment that pins the package to its plain-PyTorch CPU fp32 path for `version`."""
    env = dict(os.environ)
    env.update(RWKV_JIT_ON="0", RWKV_CUDA_ON="0", RWKV_RESCALE_LAYER="0", CUDA_VISIBLE_DEVICES="")
    env["RWKV_V7_ON"] = "1" if version == "7" else "0"
    env.pop("RWKV_DE_VERSION", None)
    return env


def _family(version: str) -> str:
    """Versions that can share one package process (same RWKV_* environment)."""
    return "7" if version == "7" else "4"


def _validate(job: OracleJob) -> None:
    if job.version not in VERSIONS:
        raise ValueError(f"unknown version {job.version!r}; expected one of {VERSIONS}")
    if not job.chunks or any(chunk is not None and chunk < 1 for chunk in job.chunks):
        raise ValueError(f"chunk settings must be None or >= 1, got {job.chunks}")
    if any(len(seq) == 0 for seq in job.sequences):
        raise ValueError("every sequence needs at least one token (the package has no empty forward)")


def _run_family(jobs: list[OracleJob], family: str, timeout_s: float) -> list[list[list[PackageRun]]]:
    with tempfile.TemporaryDirectory(prefix="rwkv_oracle_") as tmp:
        job_dir = Path(tmp)
        specs = [
            {
                "model": _model_arg(Path(job.checkpoint_path), job_dir / f"model_{j}.pth"),
                "version": job.version,
                "sequences": [[int(t) for t in seq] for seq in job.sequences],
                "chunks": list(job.chunks),
            }
            for j, job in enumerate(jobs)
        ]
        (job_dir / "jobs.json").write_text(json.dumps(specs))
        _run_subprocess(job_dir, family, timeout_s)
        return [
            [[_read_result(job_dir, j, m, i) for i in range(len(job.sequences))] for m in range(len(job.chunks))]
            for j, job in enumerate(jobs)
        ]


def _model_arg(checkpoint: Path, link: Path) -> str:
    """Path without '.pth': the v7 loader always appends '.pth' (v4-v6 append it only when missing),
    so a checkpoint with another suffix is linked (or copied) to `link` first."""
    checkpoint = checkpoint.resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(checkpoint)
    if checkpoint.suffix == ".pth":
        return str(checkpoint.with_suffix(""))
    try:
        link.symlink_to(checkpoint)
    except OSError:
        shutil.copyfile(checkpoint, link)
    return str(link.with_suffix(""))


def _run_subprocess(job_dir: Path, family: str, timeout_s: float) -> None:
    cmd = [sys.executable, str(_RUNNER), str(job_dir)]
    try:
        proc = subprocess.run(cmd, env=package_env(family), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise RuntimeError(f"rwkv package run timed out after {timeout_s}s:\n{stderr}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"rwkv package run failed (exit {proc.returncode}, {'v7' if family == '7' else 'v4-v6'} family).\n"
            f"--- stderr ---\n{proc.stderr}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )


def _read_result(job_dir: Path, job: int, mode: int, seq: int) -> PackageRun:
    logits = np.load(job_dir / f"logits_{job}_{mode}_{seq}.npy")
    with np.load(job_dir / f"state_{job}_{mode}_{seq}.npz") as npz:
        state = [npz[k] for k in sorted(npz.files)]
    return PackageRun(logits=logits, state=state)
