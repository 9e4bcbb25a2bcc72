"""Checkpoint loading, version detection and the PyTorch reference models of RWKV v4-v7.

Attributes are imported lazily (PEP 562): importing a submodule (`rwkv_deploy.models.random_checkpoint`,
`rwkv_deploy.models.state`) does not load every reader and reference model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VERSIONS": ".config", "ModelConfig": ".config", "detect_version": ".detect",
    "Checkpoint": ".loading", "build_model": ".loading", "canonicalize": ".loading",
    "load_checkpoint": ".loading", "load_model": ".loading", "RWKVModel": ".reference.base",
    "StateSpec": ".state", "StateTensorSpec": ".state",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
