"""Version string -> the module that implements it. The only place that lists the versions' modules."""

from __future__ import annotations

from types import ModuleType

from .reference import v4, v5, v6, v7
from .reference.base import RWKVModel

_MODULES: dict[str, tuple[ModuleType, type[RWKVModel]]] = {
    "4": (v4, v4.RWKV4),
    "5.0": (v5, v5.RWKV5),
    "5.1": (v5, v5.RWKV5),
    "5.2": (v5, v5.RWKV5),
    "6": (v6, v6.RWKV6),
    "7": (v7, v7.RWKV7),
}


def version_module(version: str) -> ModuleType:
    """The module with `checkpoint_sizes(tensors, path)` and `prepare_checkpoint(tensors)` for a version."""
    return _MODULES[version][0]


def model_class(version: str) -> type[RWKVModel]:
    return _MODULES[version][1]
