"""rwkv-deploy's CPU operator library for ONNX Runtime (runtime/native/rwkv_cpu_ops.cc, built by `pip install`).

It provides the operators of CPU target graphs (targets/cpu/), kernels chosen at load by CPUID:
- `ai.rwkv_deploy.cpu::Fp16MatMul` / `Fp32MatMul`: fp16 weights read as fp16 / fp32 weights, fp32 arithmetic
  (AVX-512 / AVX2+F16C / portable);
- `ai.rwkv_deploy.cpu::BlockQuantMatMul`: MatMulNBits' 8- and 4-bit weights against int8 activations
  (AVX-512 VNNI / AVX2 / portable);
- `ai.rwkv_deploy.cpu::Rwkv7WkvStep`, `TokenShiftMix`: an RWKV-7 layer's time-mix core and a block's token shift,
  each one node in place of many small ones.
Their parallel loops run on the library's own workers once `start_workers` is called (the runtime does, for a
CPU graph), on ONNX Runtime's pool otherwise. The library comes from the install only, never from a package: a
package is untrusted input and must not bring code to load."""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from pathlib import Path

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.names import CPU_OPS_DOMAIN, CPU_OPS_VERSION

DOMAIN, VERSION = CPU_OPS_DOMAIN, CPU_OPS_VERSION  # what this library provides
LIBRARY_STEM = "_rwkv_cpu_ops"
NOT_BUILT = ("rwkv-deploy's CPU operators are not built in this install (reinstall with a C++ compiler and ONNX "
             "Runtime's C API header: ONNXRUNTIME_C_API_INCLUDE=DIR pip install rwkv-deploy)")


class CpuOpsUnavailable(RefusedError):
    """The CPU operator library was not built in this install (no C++ compiler or no ONNX Runtime C header)."""


def library_path() -> Path | None:
    """The built library next to this module, or None when the install did not build it."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / (LIBRARY_STEM + suffix)
        if candidate.is_file():
            return candidate
    return None


def require_library() -> Path:
    path = library_path()
    if path is None:
        raise CpuOpsUnavailable(NOT_BUILT)
    return path


@lru_cache(maxsize=2)
def _path_of(symbol: str) -> str | None:
    path = library_path()
    if path is None:
        return None
    function = getattr(ctypes.CDLL(str(path)), symbol)
    function.restype = ctypes.c_char_p
    return function().decode()


@lru_cache(maxsize=1)
def library_version() -> int | None:
    """The operator domain version the built library implements (1 for a library from before it said), or None
    without the library: lower than VERSION when the install left a library built from older sources."""
    path = library_path()
    if path is None:
        return None
    function = getattr(ctypes.CDLL(str(path)), "RwkvCpuOpsVersion", None)
    return 1 if function is None else int(function())


@lru_cache(maxsize=1)
def _loaded() -> ctypes.CDLL:
    """The library, loaded once and kept loaded: its worker threads run its code for the life of the process."""
    return ctypes.CDLL(str(require_library()))


def start_workers(threads: int | None) -> None:
    """Run the operators' parallel loops on the library's own `threads` - 1 workers and the calling thread
    (None: one per core this process may use; 1: none, ONNX Runtime's pool then runs them).

    They replace ONNX Runtime's pool for the operators: its sleeping workers take ~20 us to wake for each of a
    step's ~100 loops and its spinning ones keep cores busy between steps; these stay awake for 200 us after a
    loop, yielding to anything else runnable, then sleep (docs/bench.md "The operators' own workers"). One set
    per process: the last call sets the count."""
    count = len(os.sched_getaffinity(0)) if threads is None else threads
    _loaded().RwkvCpuOpsSetThreads(ctypes.c_int(count))


def kernel_path() -> str | None:
    """Which Fp16MatMul kernels this machine runs ("avx512", "avx2" or "portable"), or None without the library."""
    return _path_of("RwkvCpuOpsPath")


def quant_kernel_path() -> str | None:
    """Which BlockQuantMatMul kernels this machine runs ("avx512": with VNNI, "avx2", "portable"), or None."""
    return _path_of("RwkvCpuOpsQuantPath")
