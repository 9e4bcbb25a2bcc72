"""What `rwkv-deploy bench` can be asked for, as plain data (no numpy, no PyTorch): the command line takes its
choices and defaults from here, so they are written once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .shapes import ModelShape

DEPLOY, TORCH_REFERENCE, RWKV_PACKAGE, RWKVCPP = "rwkv-deploy", "torch-reference", "rwkv-package", "rwkv.cpp"
LLAMACPP = "llama.cpp"
DEPLOY_SPIN = "rwkv-deploy-spin"  # our packages with ONNX Runtime's spin-waiting threads (`spin_wait`)
DEPLOY_CPU = "rwkv-deploy-cpu"  # packages' CPU step graphs (targets/cpu/) on rwkv-deploy's CPU operators
DEPLOY_CPU_SPIN = "rwkv-deploy-cpu-spin"  # the CPU step graphs with spin-waiting threads (--cpu-ops --spin-wait)
SPINNING = {DEPLOY_SPIN: DEPLOY, DEPLOY_CPU_SPIN: DEPLOY_CPU}  # spinning engine -> its graph's (same numbers)
GENAI = "onnxruntime-genai"  # our packages' GenAI folders (`package --genai`) run by ONNX Runtime GenAI
BASELINES = (TORCH_REFERENCE, RWKV_PACKAGE, RWKVCPP)  # the default set
KNOWN_BASELINES = BASELINES + (LLAMACPP,)  # llama.cpp on request: its first run builds it (minutes)
RWKVCPP_PRECISIONS = ("FP32", "FP16", "Q8_0", "Q5_1", "Q4_0")
LLAMACPP_PRECISIONS = ("F32", "F16", "Q8_0", "Q4_0")
BACKENDS = ("onnxruntime", "tensorrt")


def default_threads() -> tuple[int, ...]:
    """One thread and every core (both on a 1-core machine collapse to one)."""
    return tuple(dict.fromkeys((1, os.cpu_count() or 1)))


@dataclass(frozen=True)
class BenchOptions:
    shape: ModelShape | None = None  # random weights of this shape, exported at each of `precisions`
    packages: tuple[Path, ...] = ()  # or: these exported packages
    checkpoint: Path | None = None  # the packages' checkpoint, for the baselines and fidelity (with `packages`)
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int5", "int4")
    batches: tuple[int, ...] = (1, 4, 16)
    prefill_lengths: tuple[int, ...] = (64, 512)
    contexts: tuple[int, ...] = (1024, 4096, 16384)
    baselines: tuple[str, ...] = BASELINES
    rwkvcpp_precisions: tuple[str, ...] = RWKVCPP_PRECISIONS
    rwkvcpp_lib: Path | None = None  # a built librwkv.so; None: built once into work_dir from rwkvcpp_source
    rwkvcpp_source: Path | None = None  # rwkv.cpp's source archive or tree; None: the vendored one (rwkvcpp.default_source)
    llamacpp_precisions: tuple[str, ...] = LLAMACPP_PRECISIONS
    llamacpp_lib: Path | None = None  # a folder holding a built libllama.so; None: built once into work_dir
    llamacpp_sdist: Path | None = None  # the llama-cpp-python sdist (its llama.cpp); None: .cache/ of the repository
    backend: str = "onnxruntime"
    # also measure the packages with spin-waiting ONNX Runtime threads (engine DEPLOY_SPIN, decode at batch 1, at
    # each thread count above 1), the way rwkv.cpp's threads wait; the runtime's default does not spin
    spin_wait: bool = False
    # also measure each package's ONNX Runtime GenAI folder (engine GENAI: decode at batch 1, prefill, fidelity),
    # as a C, C++ or C# application runs it; needs the onnxruntime-genai package
    genai: bool = False
    # also measure each package's CPU step graph (engine DEPLOY_CPU: decode at every batch,
    # fidelity; with spin_wait also DEPLOY_CPU_SPIN): the weight products on rwkv-deploy's CPU operators; needs
    # the built operator library
    cpu_ops: bool = False
    threads: tuple[int, ...] = field(default_factory=default_threads)  # each thread count measured in turn
    rounds: int = 3  # each measurement split over this many rounds; engine order reversed every round
    min_seconds: float = 3.0  # timed seconds per measurement, over all rounds
    fidelity_tokens: int = 128  # length of the fixed token stream for KL / top-1 (0: no fidelity)
    work_dir: Path = Path(".bench-cache")
    out: Path = Path("bench-out")
    seed: int = 0


DEFAULTS = BenchOptions()
