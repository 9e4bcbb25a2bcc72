"""Oracle: logits and states from BlinkDL's `rwkv` package (0.8.32), run in a subprocess.

Each call starts one fresh interpreter (RWKV_JIT_ON=0, RWKV_CUDA_ON=0, RWKV_V7_ON=1 only for v7,
RWKV_RESCALE_LAYER=0, strategy "cpu fp32"). The package configures itself from environment
variables at import time, so an in-process import would pin one version family per test session.
Data travels through .npy/.npz files in a temporary directory; stdout is full of the package's
loading chatter and is not parsed.
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
    checkpoint_path: Path,
    version: str,
    sequences: list[list[int]],
    *,
    chunk: int | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> list[PackageRun]:
    """Logits and final state per sequence from one subprocess run; each sequence starts from a fresh state.

    Raises RuntimeError (with the subprocess's stderr) if the package fails or detects a different
    version than `version`.
    """
    _validate(version, sequences, chunk)
    with tempfile.TemporaryDirectory(prefix="rwkv_oracle_") as tmp:
        job_dir = Path(tmp)
        job = {
            "model": _model_arg(Path(checkpoint_path), job_dir),
            "version": version,
            "sequences": [[int(t) for t in seq] for seq in sequences],
            "chunk": chunk,
        }
        (job_dir / "job.json").write_text(json.dumps(job))
        _run_subprocess(job_dir, version, timeout_s)
        return [_read_result(job_dir, i) for i in range(len(sequences))]


def package_env(version: str) -> dict[str, str]:
    """Environment that pins the package to its plain-PyTorch CPU fp32 path for `version`."""
    env = dict(os.environ)
    env.update(RWKV_JIT_ON="0", RWKV_CUDA_ON="0", RWKV_RESCALE_LAYER="0", CUDA_VISIBLE_DEVICES="")
    env["RWKV_V7_ON"] = "1" if version == "7" else "0"
    env.pop("RWKV_DE_VERSION", None)
    return env


def _validate(version: str, sequences: list[list[int]], chunk: int | None) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {VERSIONS}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("every sequence needs at least one token (the package has no empty forward)")


def _model_arg(checkpoint: Path, job_dir: Path) -> str:
    """Path without '.pth': the v7 loader always appends '.pth' (v4-v6 append it only when missing),
    so a checkpoint with another suffix is linked into the job dir as model.pth."""
    checkpoint = checkpoint.resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(checkpoint)
    if checkpoint.suffix == ".pth":
        return str(checkpoint.with_suffix(""))
    link = job_dir / "model.pth"
    try:
        link.symlink_to(checkpoint)
    except OSError:
        shutil.copyfile(checkpoint, link)
    return str(link.with_suffix(""))


def _run_subprocess(job_dir: Path, version: str, timeout_s: float) -> None:
    cmd = [sys.executable, str(_RUNNER), str(job_dir)]
    try:
        proc = subprocess.run(cmd, env=package_env(version), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"rwkv package run timed out after {timeout_s}s:\n{exc.stderr or ''}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"rwkv package run failed (exit {proc.returncode}, v{version}).\n"
            f"--- stderr ---\n{proc.stderr}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )


def _read_result(job_dir: Path, i: int) -> PackageRun:
    logits = np.load(job_dir / f"logits_{i}.npy")
    with np.load(job_dir / f"state_{i}.npz") as npz:
        state = [npz[k] for k in sorted(npz.files)]
    return PackageRun(logits=logits, state=state)
