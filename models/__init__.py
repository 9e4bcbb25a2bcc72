"""Checkpoint loading, version detection and the PyTorch reference models of RWKV v4-v7."""

from .config import VERSIONS, ModelConfig
from .detect import detect_version
from .loading import Checkpoint, build_model, canonicalize, load_checkpoint, load_model
from .reference.base import RWKVModel
from .state import StateSpec, StateTensorSpec

__all__ = [
    "VERSIONS", "ModelConfig", "detect_version", "Checkpoint", "build_model", "canonicalize",
    "load_checkpoint", "load_model", "RWKVModel", "StateSpec", "StateTensorSpec",
]
