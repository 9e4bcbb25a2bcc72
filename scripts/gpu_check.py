"""Every check a GPU allows, in one run, with a summary table (`scripts/gpu_check.sh` runs this).

1. reference: each RWKV generation's PyTorch reference model on CUDA vs on the CPU (random checkpoints,
   fp32, TF32 off): max |logit difference| against the fp32 validation limit.
2. fp16: the fp16 model the exporter traces (`export.precision.to_fp16`) run on CUDA vs the fp32 CPU
   reference: max |logit difference| and top-1 agreement against the fp16 validation limits.
3. onnxruntime-gpu: exported fp32/fp16 packages on ONNX Runtime's CUDA provider vs its CPU provider
   (only where this onnxruntime has CUDA).
4. tensorrt (scripts/gpu_tensorrt.py): which TensorRT is here and whether it targets this GPU; engines of the
   bundled model, a small v7 fp16 and the 0.1B-shape fp16 package, built on the GPU and ahead of time without
   one, run (plain and CUDA graphs) vs ONNX Runtime on the CPU; `validate --backend tensorrt`; with --bench,
   decode b1/b16 and prefill at the 0.1B and 1.5B shapes vs a CUDA graph of the reference and the `rwkv`
   package (cuda fp16); then the TensorRT pytest files. TensorRT for RTX comes from wheels carried in two
   parts (scripts/rtx_wheels.sh; docs/tensorrt.md "Running on a lent GPU") and --rtx-site.

Without CUDA every check prints a `SKIP: no CUDA` line; the exit status is 1 only if a check failed.
Runs from a source checkout even where rwkv-deploy is not installed (it maps the package from
pyproject.toml, as an editable install would).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRT_TESTS = ["tests/targets/tensorrt", "tests/runtime/test_tensorrt_backend.py"]


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


def tensorrt_checks(root: Path, steps: int, bench: bool, shapes: list[str], min_seconds: float,
                    out: Path) -> Iterator[Result]:
    """scripts/gpu_tensorrt.py's checks: the library and its targets, engines built on the GPU and ahead of time
    without one, run against ONNX Runtime; validate --backend tensorrt; then the bench rows (--bench)."""
    import gpu_tensorrt as g
    from rwkv_deploy.models.bundled import bundled_checkpoint
    from rwkv_deploy.tensorrt_library import find_gpu

    gpu = find_gpu()
    converted = lambda c: Result(c.check, c.subject, c.status, c.value, c.limit, c.note)  # noqa: E731
    library = [converted(c) for c in g.library_checks(gpu)]
    yield from library
    if library[0].status == "SKIP":
        return
    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    bundled = root / "bundled-fp32"
    export_package(bundled_checkpoint(), bundled, ExportOptions(prefill=True))
    small = g.random_package(root, "v7-small", 2, 128, 1024, "fp16")
    shape = g.random_package(root, "shape-0.1b", *g.SHAPES["0.1b"], "fp16")
    packages = {"bundled fp32": bundled, "v7 small fp16": small, "0.1B fp16": shape}
    yield from (converted(c) for c in g.engine_checks(packages, root / "engines", steps))
    validate = [("bundled fp32", root / "engines" / "bundled fp32-gpu", bundled_checkpoint()),
                ("0.1B fp16", root / "engines" / "0.1B fp16-gpu", root / "shape-0.1b.pth")]
    yield from (converted(c) for c in g.validate_checks([v for v in validate if (v[1] / "engines").is_dir()]))
    if bench:
        rows = []
        for row in g.bench_rows(shapes, root / "bench", min_seconds):
            if isinstance(row, g.Check):
                yield converted(row)
            else:
                rows.append(row)
                yield Result("bench", f"{row.engine} {row.shape} {row.mode} b{row.batch}", "PASS",
                             f"{row.ms_per_call:.3f} ms", note=f"{row.tokens_per_s:.0f} tokens/s {row.note}".strip())
        print(f"bench rows: {g.write_rows(rows, out)}", flush=True)
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
    parser.add_argument("--rtx-site", type=Path, default=None,
                        help="folder where scripts/rtx_wheels.sh installed TensorRT for RTX (put on sys.path)")
    parser.add_argument("--bench", action="store_true", help="also time decode/prefill at --shapes (GPU only)")
    parser.add_argument("--shapes", default="0.1b,1.5b", help="bench shapes: 0.1b (7:12:768), 1.5b (7:24:2048)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="least timed seconds per bench number")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")),
                        help="where gpu_bench.json goes (default $OUT)")
    parser.add_argument("--skip-reference", action="store_true", help="skip the reference and fp16 checks")
    args = parser.parse_args(argv)
    if args.rtx_site is not None:
        sys.path.insert(0, str(args.rtx_site))
    sys.path.insert(0, str(REPO / "scripts"))
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

            checks = [] if args.skip_reference else [reference_checks(list(VERSIONS), args.steps, root)]
            checks += [onnxruntime_gpu_checks(packages, args.steps),
                       tensorrt_checks(root, args.steps, args.bench, args.shapes.split(","), args.min_seconds,
                                       args.out)]
            for check in checks:
                results += [report(r) for r in check]
    print("\n" + summary(results))
    failed = [r for r in results if r.status == "FAIL"]
    print(f"\n{sum(r.status == 'PASS' for r in results)} passed, {len(failed)} failed, "
          f"{sum(r.status == 'SKIP' for r in results)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
