"""Which TensorRT is here, and which GPU would an engine run on?

Two flavours share one Python API: NVIDIA TensorRT 10/11 (`import tensorrt`, data-centre and all CUDA GPUs;
builds only on a GPU, for that GPU) and TensorRT for RTX (`import tensorrt_rtx`, Ampere-and-later RTX PCs and
workstations; builds ahead of time without any GPU, for a list of compute capabilities). Both are looked up
only when asked, and a missing piece becomes one `TensorRTUnavailable` line saying what is missing and how to
install it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rwkv_deploy.errors import RefusedError

TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt_rtx"  # flavours, named by their import names
FLAVOUR_NAMES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT for RTX"}
CHOICES = {"auto": (TENSORRT, TENSORRT_RTX), "tensorrt": (TENSORRT,), "rtx": (TENSORRT_RTX,)}  # --trt
INSTALL_HINTS = {
    TENSORRT: 'install it with `pip install "rwkv-deploy[tensorrt]"` on a machine with an NVIDIA GPU, using '
              "NVIDIA's package index (--extra-index-url https://pypi.nvidia.com)",
    TENSORRT_RTX: 'install TensorRT for RTX with `pip install "rwkv-deploy[tensorrt-rtx]"` (PyPI; builds '
                  "without a GPU)",
}
INSTALL_HINT = INSTALL_HINTS[TENSORRT]


class TensorRTUnavailable(RefusedError):
    """TensorRT (or, where one is needed, a CUDA GPU) is missing: nothing was done."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.capability}

    @property
    def capability(self) -> str:
        return "%d.%d" % self.compute_capability


@dataclass(frozen=True)
class TensorRTLibrary:
    """One loaded TensorRT: its flavour, its module (`trt`) and its version."""

    flavour: str
    module: ModuleType

    @property
    def name(self) -> str:
        return FLAVOUR_NAMES[self.flavour]

    @property
    def version(self) -> str:
        return str(getattr(self.module, "__version__", "unknown"))

    @property
    def builds_without_gpu(self) -> bool:
        """RTX compiles ahead of time for named compute capabilities; full TensorRT times kernels on the GPU."""
        return self.flavour == TENSORRT_RTX

    def to_dict(self) -> dict[str, str]:
        return {"flavour": self.flavour, "name": self.name, "version": self.version}


def import_flavour(flavour: str) -> tuple[ModuleType | None, str | None]:
    """(the module, None), or (None, why it cannot be used)."""
    name = FLAVOUR_NAMES[flavour]
    try:
        module = importlib.import_module(flavour)
    except ImportError:
        return None, f"{name} is not installed"
    except Exception as exc:  # a wheel whose native libraries fail to load raises OSError & co.
        return None, f"{name} does not load ({type(exc).__name__}: {exc})"
    if not hasattr(module, "Builder"):
        return None, f"the installed `{flavour}` package is a stub without {name}'s libraries"
    return module, None


def load_tensorrt() -> tuple[ModuleType | None, str | None]:
    """(NVIDIA TensorRT's module, None), or (None, why it cannot be used)."""
    return import_flavour(TENSORRT)


def load_library(choice: str = "auto") -> TensorRTLibrary:
    """The TensorRT that `--trt CHOICE` names: auto = full TensorRT when it imports, else TensorRT for RTX.
    Raises TensorRTUnavailable naming what is missing and how to install it."""
    if choice not in CHOICES:
        raise TensorRTUnavailable(f"--trt {choice}: expected one of {', '.join(CHOICES)}")
    reasons = []
    for flavour in CHOICES[choice]:
        module, why = import_flavour(flavour)
        if module is not None:
            return TensorRTLibrary(flavour, module)
        reasons.append(why)
    hints = "; or ".join(INSTALL_HINTS[f] for f in CHOICES[choice])
    raise TensorRTUnavailable(f"{' and '.join(reasons)}; {hints}")


def library_for(flavour: str) -> TensorRTLibrary:
    """The TensorRT of `flavour` (what an engine.json names), or TensorRTUnavailable."""
    module, why = import_flavour(flavour)
    if module is None:
        raise TensorRTUnavailable(f"{why}; {INSTALL_HINTS[flavour]}")
    return TensorRTLibrary(flavour, module)


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


def require_library_for_build(choice: str = "auto") -> tuple[TensorRTLibrary, GpuInfo | None]:
    """The TensorRT to build with and the GPU (None: RTX builds ahead of time without one). Full TensorRT
    without a GPU is TensorRTUnavailable, naming RTX as the way to build here."""
    library = load_library(choice)
    gpu = find_gpu()
    if gpu is None and not library.builds_without_gpu:
        raise TensorRTUnavailable(f"cannot build with {library.name} {library.version}: no CUDA GPU is visible "
                                  "(full TensorRT builds on the GPU it targets; TensorRT for RTX builds without "
                                  "one: --trt rtx)")
    return library, gpu


def known_flavour(flavour: str) -> bool:
    return flavour in FLAVOUR_NAMES
