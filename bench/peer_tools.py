"""Running a peer's own tools (rwkv.cpp, llama.cpp): cmake builds of their libraries and their converters and
quantizers in subprocesses. A failure is the error class the caller names, with the tool's last line of output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from rwkv_deploy.errors import RwkvDeployError


def run_tool(command: Sequence[str], failure: str, error: type[RwkvDeployError],
             env: dict[str, str] | None = None) -> None:
    """Run `command`; when it fails, raise `error` with `failure: <its last line of output>`."""
    done = subprocess.run(list(command), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise error(f"{failure}: {last}")


def cmake_build(source: Path, build: Path, target: str, options: Sequence[str], jobs: int, peer: str,
                error: type[RwkvDeployError], library_flag: str) -> None:
    """Configure `source` into `build` with `options` and build `target` with `jobs` parallel jobs (Ninja when
    installed, else make)."""
    if shutil.which("cmake") is None:
        raise error(f"{peer}: cmake is not installed (apt-get install cmake), or give {library_flag}")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else ["-G", "Unix Makefiles"]
    steps = [["cmake", "-S", str(source), "-B", str(build), *generator, *options],
             ["cmake", "--build", str(build), "--target", target, "-j", str(max(1, jobs))]]
    for step in steps:
        run_tool(step, f"{peer} build failed ({' '.join(step[:2])})", error)
