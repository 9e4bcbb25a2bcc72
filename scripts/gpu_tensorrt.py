"""The TensorRT and speed checks of `scripts/gpu_check.sh` (which imports this), for a lent GPU machine.

1. library: which TensorRT imports (full TensorRT, else TensorRT for RTX from the carried wheels), and whether
   it can target this GPU at all (RTX 1.7 has no SM90 target: on an H100/H200 its exact refusal is the result).
2. engines, per package (the bundled model fp32 with prefill, a small v7 fp16, and the 0.1B shape fp16):
   - `gpu`: build-engine on this machine, GPU visible;
   - `cpu-aot`: build-engine in a child process that sees no GPU (CUDA_VISIBLE_DEVICES=""), as on a CPU machine;
   - `carried`: a package whose engines were built on the CPU machine and carried here (.rtx-wheels/cpu-built/);
   each engine then runs (plain and with CUDA graphs) against ONNX Runtime on the CPU, within the fp32/fp16
   validation limits, and `rwkv-deploy validate --backend tensorrt` runs on the bundled model and the 0.1B fp16.
3. bench (--bench): decode at batch 1 and 16 and a 512-token prefill at the 0.1B (7:12:768:65536) and 1.5B
   (7:24:2048:65536) shapes, side by side in one run: this project's engine (TensorRT backend, CUDA graphs), a
   CUDA graph of the project's PyTorch reference (the fp16 recipe the exporter uses), and BlinkDL's `rwkv`
   package ("cuda fp16"). Rows go to OUT/gpu_bench.json.

Every failure is a FAIL row with the tool's exact message (never an exception that ends the run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CARRIED = REPO / ".rtx-wheels" / "cpu-built"
SHAPES = {"0.1b": (12, 768, 65536), "1.5b": (24, 2048, 65536)}  # RWKV-7 layers, width, vocab; head size 64


@dataclass(frozen=True)
class Check:
    check: str
    subject: str
    status: str  # PASS, FAIL or SKIP
    value: str = ""
    limit: str = ""
    note: str = ""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:600]


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    """`rwkv-deploy ARGS` in a child process of this interpreter (the checkout mapped as gpu_check does)."""
    code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import gpu_check; "
            "gpu_check.make_importable(); from rwkv_deploy.cli.main import app; "
            "sys.argv = ['rwkv-deploy'] + sys.argv[1:]; app()") % (str(REPO / "scripts"), str(REPO))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def random_package(root: Path, name: str, layers: int, width: int, vocab: int, precision: str,
                   prefill: bool = True) -> Path:
    """Export a random RWKV-7 checkpoint of these sizes (bench --shape's kind of model)."""
    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from rwkv_deploy.models.random_checkpoint import make_checkpoint, save_checkpoint

    checkpoint = root / f"{name}.pth"
    if not checkpoint.exists():
        save_checkpoint(make_checkpoint("7", n_layer=layers, n_embd=width, vocab_size=vocab, seed=0), checkpoint)
    out = root / f"{name}-{precision}"
    if not out.exists():
        export_package(checkpoint, out, ExportOptions(precision=precision, tokenizer="none", prefill=prefill))
    return out


# -- 1. the library ----------------------------------------------------------------------------------------------


def library_checks(gpu: Any) -> Iterator[Check]:
    from rwkv_deploy.tensorrt_library import load_library

    try:
        library = load_library("auto")
    except Exception as exc:
        yield Check("tensorrt library", "-", "SKIP", note=_one_line(exc))
        return
    yield Check("tensorrt library", library.flavour, "PASS", library.version, note=library.name)
    if library.flavour == "tensorrt_rtx":
        from rwkv_deploy.targets.tensorrt.targets import rtx_capabilities

        targets = rtx_capabilities(library.module)
        ok = gpu.capability in targets
        yield Check("RTX targets this GPU", f"{gpu.name} {gpu.capability}", "PASS" if ok else "FAIL",
                    note=f"RTX builds for {', '.join(targets)}")


# -- 2. engines --------------------------------------------------------------------------------------------------


def _compare(package_dir: Path, steps: int, cuda_graphs: bool) -> float:
    import numpy as np
    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.onnx_backend import CPU, OnnxStepBackend
    from rwkv_deploy.runtime.tensorrt_backend import TensorRTStepBackend

    package = DeploymentPackage.open(package_dir)
    tokens = np.random.default_rng(1).integers(0, package.vocab_size, size=(steps, 3), dtype=np.int64)

    def run(backend: Any) -> Any:
        state, out = backend.fresh_state(3), []
        for row in tokens:
            logits, state = backend.step(row, state)
            out.append(logits)
        return np.stack(out).astype("float64")

    got = run(TensorRTStepBackend(package, cuda_graphs=cuda_graphs))
    return float(np.abs(got - run(OnnxStepBackend(package, providers=[CPU]))).max())


def engine_checks(packages: dict[str, Path], work: Path, steps: int) -> Iterator[Check]:
    """Build each package's engines on the GPU and ahead of time without one; run both against ORT."""
    from rwkv_deploy.validate.thresholds import thresholds_for

    for name, source in packages.items():
        for how, env in (("gpu", {}), ("cpu-aot", {"CUDA_VISIBLE_DEVICES": ""})):
            target = work / f"{name}-{how}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            started = time.perf_counter()
            result = cli("build-engine", str(target), "--batch", "1:1:4", "--batch", "16:16:16", env=env)
            seconds = time.perf_counter() - started
            line = (result.stdout + result.stderr).strip().replace("\n", " | ")
            yield Check(f"build-engine ({how})", name, "PASS" if result.returncode == 0 else "FAIL",
                        f"{seconds:.0f} s", note=line[:600])
            if result.returncode == 0:
                yield from _run_checks(target, f"{name} ({how})", steps, thresholds_for(_precision(target)))
    for carried in sorted(CARRIED.glob("*/manifest.json")) if CARRIED.is_dir() else []:
        yield from _run_checks(carried.parent, f"{carried.parent.name} (carried)", steps,
                               thresholds_for(_precision(carried.parent)))


def _precision(package_dir: Path) -> str:
    return json.loads((package_dir / "manifest.json").read_text())["graphs"]["step"]["precision"]


def _run_checks(package_dir: Path, subject: str, steps: int, limits: Any) -> Iterator[Check]:
    for graphs in (False, True):
        name = "engine (CUDA graphs) vs ORT CPU" if graphs else "engine vs ORT CPU"
        try:
            diff = _compare(package_dir, steps, graphs)
            ok = diff <= limits.logits_max_abs
            yield Check(name, subject, "PASS" if ok else "FAIL", f"{diff:.3g}", f"{limits.logits_max_abs:.3g}")
        except Exception as exc:  # the exact refusal (e.g. RTX on a GPU it has no target for) is the result
            yield Check(name, subject, "FAIL", note=_one_line(exc))


def validate_checks(items: list[tuple[str, Path, Path]]) -> Iterator[Check]:
    """`rwkv-deploy validate PKG --checkpoint CKPT --backend tensorrt` for (name, package, checkpoint)."""
    for name, package, checkpoint in items:
        result = cli("validate", str(package), "--checkpoint", str(checkpoint), "--backend", "tensorrt")
        last = ((result.stdout + result.stderr).strip().splitlines() or ["no output"])[-1]
        yield Check("validate --backend tensorrt", name, "PASS" if result.returncode == 0 else "FAIL", note=last[:600])


# -- 3. bench ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    engine: str
    shape: str
    mode: str  # decode or prefill
    batch: int
    tokens: int
    ms_per_call: float
    tokens_per_s: float
    note: str = ""


def cuda_time(call: Callable[[], Any], min_seconds: float, sync: Callable[[], None]) -> float:
    """Median-free simple timing: warm up 3 calls, then run until min_seconds; seconds per call."""
    for _ in range(3):
        call()
    sync()
    count, started = 0, time.perf_counter()
    while True:
        call()
        count += 1
        if count % 8 == 0:
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return elapsed / count


def torch_graph_decode(model: Any, batch: int, device: str = "cuda") -> Callable[[], None]:
    """One decode step of `model` captured in a CUDA graph (static token and state buffers; the new state is
    copied into the inputs inside the graph), replayed per call."""
    import torch

    model = model.to(device)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    state = [s.to(device) for s in model.init_state(batch)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(3):
            model.step(tokens, state)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        _, new_state = model.step(tokens, state)
        for old, new in zip(state, new_state):
            old.copy_(new)
    return graph.replay


def bench_rows(shapes: list[str], work: Path, min_seconds: float, prefill_tokens: int = 512) -> Iterator[Row | Check]:
    import numpy as np
    import torch
    from rwkv_deploy.export.precision import to_fp16
    from rwkv_deploy.models import load_model

    sync = torch.cuda.synchronize
    for shape in shapes:
        layers, width, vocab = SHAPES[shape]
        package = random_package(work, f"bench-{shape}", layers, width, vocab, "fp16")
        checkpoint = work / f"bench-{shape}.pth"
        # this project's engine (needs a TensorRT that can run on this GPU)
        try:
            from rwkv_deploy.runtime import DeploymentPackage
            from rwkv_deploy.runtime.tensorrt_backend import TensorRTStepBackend

            result = cli("build-engine", str(package), "--graph", "step", "--batch", "1:1:1", "--batch", "16:16:16")
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip())
            backend = TensorRTStepBackend(DeploymentPackage.open(package), cuda_graphs=True)
            for batch in (1, 16):
                state = [backend.fresh_state(batch)]
                tokens = np.zeros(batch, np.int64)

                def step() -> None:
                    _, state[0] = backend.step(tokens, state[0])
                seconds = cuda_time(step, min_seconds, sync)
                yield Row("rwkv-deploy tensorrt", shape, "decode", batch, 1, seconds * 1e3, batch / seconds,
                          "logits copied to the host each step")
        except Exception as exc:
            yield Check("bench rwkv-deploy tensorrt", shape, "FAIL", note=_one_line(exc))
        # a CUDA graph of the reference, fp16 as the exporter makes it
        try:
            model = to_fp16(load_model(checkpoint).eval())
            for batch in (1, 16):
                seconds = cuda_time(torch_graph_decode(model, batch), min_seconds, sync)
                yield Row("torch reference fp16 (CUDA graph)", shape, "decode", batch, 1, seconds * 1e3, batch / seconds)
            cuda_model = model.to("cuda")
            tokens = torch.zeros(1, prefill_tokens, dtype=torch.long, device="cuda")

            def prefill() -> None:
                with torch.no_grad():
                    cuda_model(tokens, [s.to("cuda") for s in cuda_model.init_state(1)], last_only=True)
            seconds = cuda_time(prefill, min_seconds, sync)
            yield Row("torch reference fp16", shape, "prefill", 1, prefill_tokens, seconds * 1e3,
                      prefill_tokens / seconds)
            del cuda_model, model
        except Exception as exc:
            yield Check("bench torch reference", shape, "FAIL", note=_one_line(exc))
        # BlinkDL's rwkv package, cuda fp16 (one sequence at a time)
        try:
            os.environ.setdefault("RWKV_CUDA_ON", "0")
            os.environ["RWKV_V7_ON"] = "1"
            from rwkv.model import RWKV

            rwkv = RWKV(str(checkpoint)[: -len(".pth")], "cuda fp16")
            state = [None]

            def rwkv_step() -> None:
                _, state[0] = rwkv.forward([0], state[0])
            seconds = cuda_time(rwkv_step, min_seconds, sync)
            yield Row("rwkv package cuda fp16", shape, "decode", 1, 1, seconds * 1e3, 1 / seconds,
                      f"RWKV_CUDA_ON={os.environ['RWKV_CUDA_ON']}")
            seconds = cuda_time(lambda: rwkv.forward([0] * prefill_tokens, None), min_seconds, sync)
            yield Row("rwkv package cuda fp16", shape, "prefill", 1, prefill_tokens, seconds * 1e3,
                      prefill_tokens / seconds)
            del rwkv
        except Exception as exc:
            yield Check("bench rwkv package", shape, "FAIL", note=_one_line(exc))
        torch.cuda.empty_cache()


def write_rows(rows: list[Row], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_bench.json"
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return path
