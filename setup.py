"""Build step of `pip install`: rwkv-deploy's CPU operator library for ONNX Runtime (runtime/native/).

Everything else is declared in pyproject.toml. The library is a plain shared object that ONNX Runtime loads
(SessionOptions.register_custom_ops_library); it is built as an optional extension so that a machine without a
C++ compiler or without ONNX Runtime's C API header still installs, only without the CPU operators (the runtime
then says so in one line where they are asked for). The header (onnxruntime_c_api.h, which no registry ships) is
looked for in $ONNXRUNTIME_C_API_INCLUDE, then in ../shared/vendor/onnxruntime-c-api beside the checkout.
Kernels for AVX-512 and AVX2+F16C are compiled with per-function target attributes and chosen at run time, so
the library is not tied to the build machine's CPU (no -march=native).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
HEADER = "onnxruntime_c_api.h"


def _include_dirs() -> list[str]:
    candidates = [os.environ.get("ONNXRUNTIME_C_API_INCLUDE", ""), str(HERE.parent / "shared/vendor/onnxruntime-c-api")]
    return [c for c in candidates if c and (Path(c) / HEADER).is_file()][:1]


class BuildNativeLibrary(build_ext):
    """A library, not a Python module: no Python headers or symbols needed, and no failure if it cannot build."""

    def build_extension(self, ext: Extension) -> None:
        if not ext.include_dirs:
            print(f"rwkv-deploy: {HEADER} not found (set ONNXRUNTIME_C_API_INCLUDE): CPU operators not built")
            return
        super().build_extension(ext)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # it exports RegisterCustomOps, not PyInit_*


setup(
    ext_modules=[Extension(
        "rwkv_deploy.runtime._rwkv_cpu_ops",
        sources=["runtime/native/rwkv_cpu_ops.cc", "runtime/native/weight_matmul.cc",
                 "runtime/native/block_quant_matmul.cc", "runtime/native/wkv7_step.cc", "runtime/native/worker_pool.cc"], depends=["runtime/native/kernels.h"], language="c++",
        include_dirs=_include_dirs(), optional=True,
        extra_link_args=["-pthread"], extra_compile_args=["-O3", "-pthread", "-std=c++17", "-fvisibility=hidden", "-Wno-uninitialized",
                            "-Wno-maybe-uninitialized", "-Wno-psabi"])],
    cmdclass={"build_ext": BuildNativeLibrary},
)
