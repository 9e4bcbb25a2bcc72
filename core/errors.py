"""Errors that the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations


class RwkvDeployError(Exception):
    """Base of every error meant for the user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class RefusedError(RwkvDeployError):
    """What the user gave (an option, a path, a file, a package) is refused before anything is produced:
    exit code 2. Raised as it is where no caller needs to tell the case apart; the named subclasses below
    and across the package exist where one does (an `except`, or a field such as a checkpoint's path)."""

    exit_code = 2


class CheckpointError(RefusedError):
    """A checkpoint file that cannot be read or is not a supported RWKV model."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
