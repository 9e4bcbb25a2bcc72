"""Publishing a directory (a package, a Triton repository, an extracted archive, a validation report) so that
readers see the old one or the complete new one, and concurrent or killed writers leave nothing wrong behind.

- The new directory is built in a staging sibling `.<name>.tmp-<pid>-<random>` holding an owner marker file,
  then renamed into place. Without `replace`, that rename fails if the target appeared meanwhile (rename(2)
  never replaces a non-empty directory), so two writers cannot both claim the same new target.
- One writer per target: an advisory lock on `.<name>.lock` (flock; the kernel drops it when the holder
  dies, even by SIGKILL) is held from the first check to the rename. A second writer fails at once, naming
  the first one's pid.
- Leftovers of a writer killed by SIGKILL (staging folders, a displaced old directory, temporary files) are
  recognised by name pattern, owner marker, our uid and a dead pid, and cleaned by the next run on the same
  target: staging folders removed, a displaced old directory put back if the target is missing. The owner
  marker is what makes a folder ours: a staging folder holds `.rwkv-deploy-staging`, a displaced old directory
  has a sibling `<its name>.owner` written (O_EXCL) before the move; each records the writer's pid, uid and
  target, and must match the folder's name. A user's folder that merely looks like a leftover
  (`.<target>.old-<pid>` of a dead pid) is never deleted or moved.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rwkv_deploy import interrupts
from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import (UnsafePathError, is_link, owned_leftover, remove_leftover_files,
                                temporary_name_pattern)

MARKER = ".rwkv-deploy-staging"  # inside a staging folder until it is published
OWNER_SUFFIX = ".owner"  # beside a displaced old directory: `.<target>.old-<pid>.owner`
MAX_MARKER_BYTES = 4096


class TargetError(RefusedError):
    """The output cannot be written: another run is writing it, or it appeared or changed meanwhile."""


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def target_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of `target` (TargetError at once when another run holds it); the lock file is removed
    on release, and a lock file left by a killed run is simply taken over."""
    path = lock_path(Path(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{path}: is a symbolic link; refusing to use it as a lock") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TargetError(f"{target}: another rwkv-deploy run (pid {holder}) is writing it; wait for it to "
                              "finish or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file that its previous holder unlinked between our open and flock
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of `target` left next to it (see the module docstring); returns the paths
    handled. Call it while holding `target_lock`."""
    target = Path(target)
    handled = remove_leftover_files(target)
    staging, old = temporary_name_pattern(target.name), temporary_name_pattern(target.name, "old")
    try:
        siblings = [Path(e.path) for e in os.scandir(target.parent) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return handled
    for path in siblings:
        if owned_leftover(path, staging) and _marker_matches(path / MARKER, path, staging, target):
            shutil.rmtree(path, ignore_errors=True)
            handled.append(path)
        elif owned_leftover(path, old) and _marker_matches(_owner_file(path), path, old, target):
            if not os.path.lexists(target):
                os.rename(path, target)  # killed between moving the old output aside and moving the new one in
            else:
                shutil.rmtree(path, ignore_errors=True)
            _owner_file(path).unlink(missing_ok=True)
            handled.append(path)
    owners = re.compile(old.pattern.removesuffix("$") + re.escape(OWNER_SUFFIX) + "$")
    for entry in _files_beside(target):  # an owner file whose move never happened (killed right after writing it)
        path = Path(entry)
        stem = path.with_name(path.name.removesuffix(OWNER_SUFFIX))
        if owned_leftover(path, owners) and not os.path.lexists(stem) and _marker_matches(path, stem, old, target):
            path.unlink(missing_ok=True)
            handled.append(path)
    return handled


def _files_beside(target: Path) -> list[str]:
    try:
        return [e.path for e in os.scandir(target.parent) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _owner_file(displaced: Path) -> Path:
    return displaced.with_name(displaced.name + OWNER_SUFFIX)


def _owner_record(target: Path) -> bytes:
    return (json.dumps({"pid": os.getpid(), "uid": os.getuid(), "target": target.name}) + "\n").encode()


def _marker_matches(marker: Path, folder: Path, pattern: re.Pattern[str], target: Path) -> bool:
    """The marker is a regular file that this uid's writer of `target` wrote for `folder`: the pid it records is
    the one in the folder's name."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        record = json.loads(os.read(fd, MAX_MARKER_BYTES))
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
    match = pattern.match(folder.name)
    return (isinstance(record, dict) and match is not None and record.get("pid") == int(match.group(1))
            and record.get("uid") == os.getuid() and record.get("target") == target.name)


def new_staging_dir(target: Path) -> Path:
    """An empty staging folder next to `target` (mode 0755: packages are meant to be read), with its marker."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o755)
    (tmp / MARKER).write_bytes(_owner_record(target))
    return tmp


def publish(staging: Path, target: Path, replace: bool) -> None:
    """Rename the finished `staging` folder to `target`. Without `replace` the target must be absent or an
    empty directory at that moment; with it, an existing directory is moved aside, replaced, then deleted."""
    (staging / MARKER).unlink()
    if is_link(target):
        raise UnsafePathError(f"{target}: is a symbolic link; refusing to replace it")
    if replace and target.is_dir() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        owner = _owner_file(old)
        fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)  # before the move
        try:
            os.write(fd, _owner_record(target))
        finally:
            os.close(fd)
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        owner.unlink(missing_ok=True)
        return
    try:
        os.rename(staging, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise TargetError(f"{target}: appeared while it was being written (another run?); nothing was "
                              "replaced") from None
        raise


@contextmanager
def staged_directory(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory for `target` inside the `with` block; it is published when the block ends without
    an exception, and removed (never published) on any exception, KeyboardInterrupt and signals included.

    SIGINT/SIGTERM/SIGHUP are held back while the lock file and the staging folder are being created, so a
    signal cannot land between creating one and being ready to remove it; they are delivered right after.
    A signal whose exception something inside the block swallowed still stops the publication."""
    target = Path(target)
    with ExitStack() as held:
        tmp = None
        try:
            with interrupts.deferred():
                held.enter_context(target_lock(target))
                clean_leftovers(target)
                tmp = new_staging_dir(target)
            yield tmp
            interrupts.raise_if_interrupted()
            publish(tmp, target, replace)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def staged_files(staging: Path) -> list[Path]:
    """The regular files under a staging folder, sorted, without its marker (links are not followed)."""
    files = []
    for folder, dirs, names in os.walk(staging):
        dirs.sort()
        for name in names:
            path = Path(folder) / name
            if path != staging / MARKER and stat.S_ISREG(os.lstat(path).st_mode):
                files.append(path)
    return sorted(files)
