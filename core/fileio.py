"""Atomic file writes: readers see the old file or the complete new one, never a partial write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(target: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Call `write` on a temporary file next to `target`, fsync it, then rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomically(target: str | os.PathLike, data: bytes | memoryview) -> None:
    write_atomically(target, lambda f: f.write(data))
