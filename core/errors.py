"""Errors that the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations


class RwkvDeployError(Exception):
    """Base of every error meant for the user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class CheckpointError(RwkvDeployError):
    """A checkpoint file that cannot be read or is not a supported RWKV model."""

    exit_code = 2

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
