"""Run exported packages without PyTorch: open a package, step its graph, sample and generate text.

    package = DeploymentPackage.open("out/")
    generator = Generator(OnnxStepBackend(package), package.tokenizer)
    print(generator.generate("Hello", max_tokens=32, seed=0).text)

`OnnxStepBackend` is imported on first use, so numpy-only code (state files, sampling) does not
need onnxruntime.
"""

from __future__ import annotations

from typing import Any

from .generation import (GenerationError, GenerationResult, GenerationStats, Generator, PrefillBackend, StepBackend,
                         TextStream, can_prefill, stream_logits)
from .package import DeploymentPackage, InputError, PackageError
from .sampling import NonFiniteError, SamplingError, SamplingParams, sample_token
from .state import RecurrentState, StateError

__all__ = [
    "BackendError", "DeploymentPackage", "GenerationError", "GenerationResult", "GenerationStats", "Generator",
    "InputError", "NonFiniteError", "OnnxStepBackend", "PackageError", "RecurrentState", "SamplingError", "SamplingParams",
    "StateError", "StepBackend", "PrefillBackend", "TextStream", "can_prefill", "sample_token", "stream_logits",
]

_LAZY = {"OnnxStepBackend", "BackendError"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import onnx_backend

        return getattr(onnx_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
