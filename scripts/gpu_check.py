"""Every check a GPU allows, in one run, with a summary table (`scripts/gpu_check.sh` runs this).

1. reference: each RWKV generation's PyTorch reference model on CUDA vs on the CPU (random checkpoints,
   fp32, TF32 off): max |logit difference| against the fp32 validation limit.
2. fp16: the fp16 model the exporter traces (`export.precision.to_fp16`) run on CUDA vs the fp32 CPU
   reference: max |logit difference| and top-1 agreement against the fp16 validation limits.
3. onnxruntime-gpu: exported fp32/fp16 packages on ONNX Runtime's CUDA provider vs its CPU provider
   (only where this onnxruntime has CUDA).
4. tensorrt: check-trt, build-engine and the TensorRT backend (plain and CUDA graphs) vs ONNX Runtime on
   the CPU, then the TensorRT pytest files (only where TensorRT is installed).

Without CUDA every check prints a `SKIP: no CUDA` line; the exit status is 1 only if a check failed.
Runs from a source checkout even where rwkv-deploy is not installed (it maps the package from
pyproject.toml, as an editable install would).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRT_TESTS = ["tests/export/tensorrt", "tests/runtime/test_tensorrt_backend.py"]


def make_importable() -> None:
    """`import rwkv_deploy` from this checkout (tests.helpers too), installed or not."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("rwkv_deploy") is not None:
        return
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        spec = importlib.util.spec_from_file_location(name, REPO / folder / "__init__.py",
                                                      submodule_search_locations=[str(REPO / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


@dataclass(frozen=True)
class Result:
    check: str
    subject: str
    status: str  # PASS, FAIL or SKIP
    value: str = ""
    limit: str = ""
    note: str = ""


def report(result: Result) -> Result:
    if result.status == "SKIP":
        print(f"SKIP: {result.note} ({result.check} {result.subject})", flush=True)
    else:
        print(f"{result.status}: {result.check} {result.subject} {result.value} (limit {result.limit}) "
              f"{result.note}".rstrip(), flush=True)
    return result


def measured(check: str, subject: str, value: float, limit: float, passed: bool, note: str = "") -> Result:
    return Result(check, subject, "PASS" if passed else "FAIL", f"{value:.3g}", f"{limit:.3g}", note)


# -- the checks ------------------------------------------------------------------------------------------


def random_model(version: str, root: Path, seed: int):
    import torch
    from rwkv_deploy.models import load_model
    from tests.helpers.random_checkpoints import make_checkpoint

    sizes = {} if version == "4" else {"head_size": 32}
    path = root / f"v{version}.pth"
    torch.save(make_checkpoint(version, n_layer=4, n_embd=128, vocab_size=1024, seed=seed, **sizes), path)
    return load_model(path).eval()


def run_model(model, tokens, device: str):
    """Logits [steps, batch, vocab] (float64 on the host) of `model` stepped through `tokens` on `device`."""
    import torch

    model = model.to(device)
    state = [s.to(device) for s in model.init_state(tokens.shape[1])]
    out = []
    with torch.no_grad():
        for row in tokens:
            logits, state = model.step(row.to(device), state)
            out.append(logits.double().cpu())
    return torch.stack(out)


def reference_checks(versions: list[str], steps: int, root: Path, device: str = "cuda") -> Iterator[Result]:
    """The reference and its fp16 variant on `device` vs the fp32 reference on the CPU ("cpu" for a dry run)."""
    import torch
    from rwkv_deploy.export.precision import to_fp16
    from rwkv_deploy.validate.thresholds import thresholds_for

    fp32, fp16 = thresholds_for("fp32"), thresholds_for("fp16")
    for seed, version in enumerate(versions):
        model = random_model(version, root, seed)
        tokens = torch.randint(0, model.config.vocab_size, (steps, 2), generator=torch.Generator().manual_seed(seed))
        reference = run_model(model, tokens, "cpu")
        on_cuda = run_model(model, tokens, device)
        diff = float((on_cuda - reference).abs().max())
        yield measured("reference CUDA vs CPU", f"v{version}", diff, fp32.logits_max_abs, diff <= fp32.logits_max_abs)
        half = run_model(to_fp16(model.to("cpu")), tokens, device)
        diff = float((half - reference).abs().max())
        top1 = float((half.argmax(-1) == reference.argmax(-1)).double().mean())
        passed = diff <= fp16.logits_max_abs and top1 >= fp16.top1_min
        yield measured("fp16 on CUDA vs fp32", f"v{version}", diff, fp16.logits_max_abs, passed, f"top-1 {top1:.3f}")


def package_steps(backend, tokens):
    state, out = backend.fresh_state(tokens.shape[1]), []
    for row in tokens:
        logits, state = backend.step(row, state)
        out.append(logits)
    import numpy as np

    return np.stack(out).astype("float64")


def export_packages(root: Path) -> dict[str, Path]:
    from tests.helpers.small_packages import export_small

    return {precision: export_small(root, "7", precision) for precision in ("fp32", "fp16")}


def onnxruntime_gpu_checks(packages: Callable[[], dict[str, Path]], steps: int) -> Iterator[Result]:
    import numpy as np
    import onnxruntime as ort
    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.onnx_backend import CPU, CUDA, OnnxStepBackend
    from rwkv_deploy.validate.thresholds import thresholds_for

    if CUDA not in ort.get_available_providers():
        yield Result("onnxruntime-gpu", "v7", "SKIP", note=f"onnxruntime {ort.__version__} has no CUDA provider")
        return
    tokens = np.random.default_rng(0).integers(0, 256, size=(steps, 3), dtype=np.int64)
    for precision, directory in packages().items():
        package = DeploymentPackage.open(directory)
        gpu = package_steps(OnnxStepBackend(package, providers=[(CUDA, {"use_tf32": 0}), CPU]), tokens)
        cpu = package_steps(OnnxStepBackend(package, providers=[CPU]), tokens)
        diff, limit = float(np.abs(gpu - cpu).max()), thresholds_for(precision).logits_max_abs
        yield measured("onnxruntime CUDA vs CPU", f"v7 {precision}", diff, limit, diff <= limit)


def tensorrt_checks(packages: Callable[[], dict[str, Path]], steps: int) -> Iterator[Result]:
    import numpy as np
    from rwkv_deploy.errors import RwkvDeployError
    from rwkv_deploy.export.tensorrt.build_config import make_build_config
    from rwkv_deploy.export.tensorrt.builder import build_engine
    from rwkv_deploy.tensorrt_library import load_tensorrt
    from rwkv_deploy.export.tensorrt.lint import lint_package
    from rwkv_deploy.runtime import DeploymentPackage
    from rwkv_deploy.runtime.onnx_backend import CPU, OnnxStepBackend
    from rwkv_deploy.runtime.tensorrt_backend import TensorRTStepBackend
    from rwkv_deploy.validate.thresholds import thresholds_for

    trt, why = load_tensorrt()
    if trt is None:
        yield Result("tensorrt", "v7", "SKIP", note=why)
        return
    tokens = np.random.default_rng(1).integers(0, 256, size=(steps, 3), dtype=np.int64)
    for precision, directory in packages().items():
        errors = lint_package(directory).errors
        yield Result("check-trt", f"v7 {precision}", "FAIL" if errors else "PASS", f"{len(errors)} errors", "0")
        try:
            started = time.perf_counter()
            build_engine(directory, make_build_config(directory, ["1:1:4"]))
            yield Result("build-engine", f"v7 {precision}", "PASS", f"{time.perf_counter() - started:.0f} s")
            package = DeploymentPackage.open(directory)
            reference = package_steps(OnnxStepBackend(package, providers=[CPU]), tokens)
            limit = thresholds_for(precision).logits_max_abs
            for graphs in (False, True):
                got = package_steps(TensorRTStepBackend(package, cuda_graphs=graphs), tokens)
                diff = float(np.abs(got - reference).max())
                name = "TensorRT (CUDA graphs) vs ORT CPU" if graphs else "TensorRT vs ORT CPU"
                yield measured(name, f"v7 {precision}", diff, limit, diff <= limit)
        except RwkvDeployError as exc:
            yield Result("tensorrt", f"v7 {precision}", "FAIL", note=str(exc))
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TRT_TESTS],
                           cwd=REPO, capture_output=True, text=True)
    last = (tests.stdout.strip().splitlines() or ["no output"])[-1]
    yield Result("tensorrt pytest", " ".join(TRT_TESTS), "PASS" if tests.returncode == 0 else "FAIL", note=last)


# -- running ---------------------------------------------------------------------------------------------


def summary(results: list[Result]) -> str:
    rows = [("check", "subject", "status", "value", "limit", "note")]
    rows += [(r.check, r.subject, r.status, r.value, r.limit, r.note) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths)) + "  " + row[5]
                     for row in rows).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48, help="recurrent steps per comparison")
    args = parser.parse_args(argv)
    make_importable()
    import torch
    from tests.helpers.random_checkpoints import VERSIONS

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"torch {torch.__version__}, CUDA device: {device}", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        if not cuda:
            for check in ("reference CUDA vs CPU", "fp16 on CUDA vs fp32"):
                results += [report(Result(check, f"v{v}", "SKIP", note="no CUDA")) for v in VERSIONS]
            results += [report(Result(check, "v7", "SKIP", note="no CUDA")) for check in ("onnxruntime-gpu", "tensorrt")]
        else:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            exported: dict[str, Path] = {}

            def packages() -> dict[str, Path]:  # exported once, only if a check needs them
                if not exported:
                    exported.update(export_packages(root))
                return exported

            for check in (reference_checks(list(VERSIONS), args.steps, root),
                          onnxruntime_gpu_checks(packages, args.steps), tensorrt_checks(packages, args.steps)):
                results += [report(r) for r in check]
    print("\n" + summary(results))
    failed = [r for r in results if r.status == "FAIL"]
    print(f"\n{sum(r.status == 'PASS' for r in results)} passed, {len(failed)} failed, "
          f"{sum(r.status == 'SKIP' for r in results)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
