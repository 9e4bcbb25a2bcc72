"""Is TensorRT usable here, and which GPU would an engine be built for?

Both are looked up only when asked (TensorRT, torch and cuda-python are optional), and a missing piece
becomes one `TensorRTUnavailable` line saying what is missing and how to install it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rwkv_deploy.errors import RwkvDeployError

INSTALL_HINT = ('install it with `pip install "rwkv-deploy[tensorrt]"` on a machine with an NVIDIA GPU, '
                "using NVIDIA's package index (--extra-index-url https://pypi.nvidia.com)")


class TensorRTUnavailable(RwkvDeployError):
    """TensorRT or a CUDA GPU is missing: nothing was done."""

    exit_code = 2


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": "%d.%d" % self.compute_capability}


def load_tensorrt() -> tuple[ModuleType | None, str | None]:
    """(the tensorrt module, None), or (None, why it cannot be used)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None, "TensorRT is not installed"
    except Exception as exc:  # a wheel whose native libraries fail to load raises OSError & co.
        return None, f"TensorRT does not load ({type(exc).__name__}: {exc})"
    if not hasattr(trt, "Builder"):
        return None, "the installed `tensorrt` package is a stub without TensorRT's libraries"
    return trt, None


def find_gpu() -> GpuInfo | None:
    """The current CUDA device, through PyTorch if it has CUDA, else cuda-python; None without either."""
    return _gpu_from_torch() or _gpu_from_cuda_python()


def _gpu_from_torch() -> GpuInfo | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device()
        return GpuInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))
    except Exception:  # a broken CUDA setup is "no GPU" here; the caller says so
        return None


def _gpu_from_cuda_python() -> GpuInfo | None:
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count < 1:
            return None
        err, device = cudart.cudaGetDevice()
        err, prop = cudart.cudaGetDeviceProperties(device)
        if err != cudart.cudaError_t.cudaSuccess:
            return None
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name.rstrip("\0"), (int(prop.major), int(prop.minor)))
    except Exception:
        return None


def require_tensorrt_and_gpu(action: str) -> tuple[ModuleType, GpuInfo]:
    """TensorRT and the GPU, or TensorRTUnavailable: '<action>: <what is missing>; <how to install>'."""
    trt, why = load_tensorrt()
    gpu = find_gpu()
    missing = [m for m in (why, None if gpu else "no CUDA GPU is visible") if m]
    if missing:
        raise TensorRTUnavailable(f"cannot {action}: {' and '.join(missing)}; {INSTALL_HINT}")
    return trt, gpu


def tensorrt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))
