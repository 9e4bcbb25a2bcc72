"""File writes that readers can trust: atomic (the old file or the complete new one, never a partial write)
and never through a symbolic link (a link planted where we write must not redirect the bytes elsewhere).

Temporary files are named `.<name>.tmp-<pid>-<random>` next to the target, so a later write to the same
target recognises the leftovers of a killed writer (its pid no longer runs, the file is ours) and removes them.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from rwkv_deploy.errors import RefusedError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class UnsafePathError(RefusedError):
    """A write target that is (or sits behind) a symbolic link or is not the kind of file expected."""


def is_link(path: str | os.PathLike) -> bool:
    """True for a symbolic link, dangling or not (Path.exists follows links and misses dangling ones)."""
    return os.path.islink(path)


def refuse_link(path: str | os.PathLike, what: str = "") -> None:
    """Raise UnsafePathError when `path` is a symbolic link: nothing is ever written through one."""
    if is_link(path):
        raise UnsafePathError(f"{path}: is a symbolic link; refusing to write through it{what}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs here (a pid we may not signal still runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_name_pattern(target_name: str, kind: str = "tmp") -> re.Pattern[str]:
    """The names this module and `rwkv_deploy.staging` give temporaries of `target_name`: group 1 is the pid."""
    return re.compile(re.escape(f".{target_name}.{kind}-") + r"(\d+)(?:-[A-Za-z0-9_]+)?$")


def owned_leftover(path: Path, pattern: re.Pattern[str]) -> bool:
    """`path` is a temporary of a dead writer: its name matches, its pid is gone, and it is ours (same uid)."""
    match = pattern.match(path.name)
    if not match or process_alive(int(match.group(1))):
        return False
    try:
        return os.lstat(path).st_uid == os.getuid()
    except OSError:
        return False


def remove_leftover_files(target: Path) -> list[Path]:
    """Delete temporary files that killed writers of `target` left next to it; returns what was removed."""
    pattern = temporary_name_pattern(target.name)
    removed = []
    try:
        siblings = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in siblings:
        path = Path(entry.path)
        if entry.is_file(follow_symlinks=False) and owned_leftover(path, pattern):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def write_atomically(target: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Call `write` on a temporary file next to `target`, fsync it, then rename it over `target`.

    Refuses (UnsafePathError) when `target` is a symbolic link or a directory, before writing and again
    just before the rename: the link is neither followed nor silently replaced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_target(target)
    remove_leftover_files(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        _check_target(target)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_target(target: Path) -> None:
    refuse_link(target)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{target}: exists and is not a regular file")


def write_bytes_atomically(target: str | os.PathLike, data: bytes | memoryview) -> None:
    write_atomically(target, lambda f: f.write(data))


def create_new_file(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path`, which must not exist yet (O_EXCL) and is never a link (O_NOFOLLOW): for files
    inside a folder this process just created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise UnsafePathError(f"{path}: appeared while it was being written; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def open_regular_file(path: str | os.PathLike, follow_links: bool = False) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (never a fifo or device, which could block or
    never end) and, unless `follow_links` (a path the user typed), not a symbolic link (O_NOFOLLOW, so a
    link swapped in after a check is not followed either)."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags if follow_links else flags | _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path}: is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
