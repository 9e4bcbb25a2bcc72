"""Building a peer's library from its sources with the system's cmake (rwkv.cpp, llama.cpp): one target,
Ninja when installed, else make; a failure is the error class the caller names, with cmake's last line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from rwkv_deploy.errors import RwkvDeployError


def cmake_build(source: Path, build: Path, target: str, options: Sequence[str], jobs: int, peer: str,
                error: type[RwkvDeployError], library_flag: str) -> None:
    """Configure `source` into `build` with `options` and build `target` with `jobs` parallel jobs."""
    if shutil.which("cmake") is None:
        raise error(f"{peer}: cmake is not installed (apt-get install cmake), or give {library_flag}")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else ["-G", "Unix Makefiles"]
    steps = [["cmake", "-S", str(source), "-B", str(build), *generator, *options],
             ["cmake", "--build", str(build), "--target", target, "-j", str(max(1, jobs))]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise error(f"{peer} build failed ({' '.join(step[:2])}): {last}")
