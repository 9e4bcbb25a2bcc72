"""Pick a step backend by name: what a `--backend` option hands over.

    from rwkv_deploy.runtime.backends import BACKENDS, make_backend
    backend = make_backend("tensorrt", DeploymentPackage.open(dir), cuda_graphs=True)
    Generator(backend, package.tokenizer).generate(...)

For command authors: offer `--backend` with the choices in `BACKENDS` (default "onnxruntime") and pass
the value here; keyword options go to the backend's constructor (`providers=`, `threads=`, `spin_wait=`,
`cpu_graph=` for ONNX Runtime, `cpu_options` builds those but `providers`; `engine_path=`, `cuda_graphs=` for
TensorRT). Each backend is imported only when chosen, so
ONNX Runtime users never need TensorRT and TensorRT users never load ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

from rwkv_deploy.errors import RefusedError

from .generation import StepBackend
from .package import DeploymentPackage

BACKENDS = ("onnxruntime", "tensorrt")
DEFAULT_BACKEND = BACKENDS[0]


class UnknownBackendError(RefusedError, ValueError):
    """A --backend name the runtime does not have."""


def cpu_options(name: str, threads: int | None = None, spin_wait: bool = False,
                cpu_graph: str | None = None) -> dict[str, Any]:
    """The CPU settings to hand `make_backend(name, ...)`, only those given: ONNX Runtime's intra-op `threads`
    (None: its default), `spin_wait` and `cpu_graph` ("auto", "on", "off": the package's CPU graph,
    runtime/cpu_graph.py); nothing for the TensorRT backend, whose work runs on the GPU."""
    if name != "onnxruntime":
        return {}
    return {**({"threads": threads} if threads is not None else {}), **({"spin_wait": True} if spin_wait else {}),
            **({"cpu_graph": cpu_graph} if cpu_graph is not None else {})}


def make_backend(name: str, package: DeploymentPackage, **options: Any) -> StepBackend:
    """The backend `name` ("onnxruntime" or "tensorrt") on `package`, built with `options`."""
    if name == "onnxruntime":
        from .onnx_backend import OnnxStepBackend

        return OnnxStepBackend(package, **options)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTStepBackend

        return TensorRTStepBackend(package, **options)
    raise UnknownBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
