"""scripts/ort_threading.py, ort_kernels.py and ort_profile.py, the measurements behind docs/bench.md's threading and
kernel figures, still run and report every configuration they name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_ort_threading_reports_each_configuration_beside_a_busy_process(shared_package):
    out = run(str(SCRIPTS / "ort_threading.py"), str(shared_package("7", "int8")), "--steps", "2", "--rounds", "2",
              "--busy", "1")
    assert "1 busy process(es)" in out
    for name in ("1 thread", "2 threads, no spinning", "2 threads, spinning", "parallel executor"):
        (line,) = [line for line in out.splitlines() if line.strip().startswith(name)]
        assert float(line.split("ms/step")[0].split()[-1]) > 0


def test_ort_profile_names_the_op_types_of_the_step(shared_package):
    out = run(str(SCRIPTS / "ort_profile.py"), str(shared_package("7", "int8")), "--batch", "2", "--steps", "3")
    assert "batch 2, 1 thread(s)" in out
    assert "MatMulNBits" in out and "slowest nodes:" in out


def test_ort_kernels_times_every_kernel_and_says_how_fp16_runs():
    out = run(str(SCRIPTS / "ort_kernels.py"), "--k", "64", "--n", "128")
    timed = [line for line in out.splitlines() if "GFLOP/s" in line]
    assert len(timed) == 3 * 5  # M=1, 16 and 64 x (fp32, 8-bit and 4-bit at two accuracy levels)
    assert len([line for line in out.splitlines() if "stacked 3-row" in line]) == 2
    assert "fp16 MatMul after session start: nodes [" in out
