"""Which commands need an extra: a plain `pip install rwkv-deploy` is the runtime only, so the commands that
load checkpoints (`[export]`) or read ONNX protobufs to build deployment targets (`[targets]`, no PyTorch) say
in one line what to install instead of a traceback."""

from __future__ import annotations

import importlib.util

from rwkv_deploy.errors import RefusedError

TORCH_HINT = "install PyTorch first (its CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


class MissingExtraError(RefusedError):
    """A command whose install extra is not installed: names the extra to install."""


def require_modules(command: str, *modules: str, extra: str = "export") -> None:
    """Raise MissingExtraError naming `command` and the extra to install when any of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        hint = f"; {TORCH_HINT}" if "torch" in missing else ""
        raise MissingExtraError(f"`rwkv-deploy {command}` needs {' and '.join(missing)}, which this install lacks: "
                                f'pip install "rwkv-deploy[{extra}]"{hint}')


def require_targets_extra(command: str) -> None:
    """For commands that turn a finished package into a deployment artifact (no PyTorch needed)."""
    require_modules(command, "onnx", extra="targets")


def require_export_extra(command: str) -> None:
    """For commands that run the PyTorch reference and write or read ONNX protobufs."""
    require_modules(command, "torch", "onnx")


MAX_PARAMS_HELP = "raise the plausibility cap on a checkpoint's parameters (default 50e9) for a real giant model"


def raise_param_cap(max_params: int | None) -> None:
    """`--max-params N`: the cap every checkpoint read in this process (and its bench workers) uses."""
    if max_params is None:
        return
    import os

    from rwkv_deploy import limits

    if max_params < 1:
        raise MissingExtraError(f"--max-params {max_params}: must be at least 1")
    os.environ[limits.MAX_PARAMS_ENV] = str(max_params)
