"""Run the PyTorch reference and the deployed package side by side on the same tokens and measure the gap.

The package is opened by the runtime (`DeploymentPackage`: manifest, hashes, tokenizer, fresh state) and
run by the runtime's backend (`sides.ArtifactSide` over `runtime.backends.make_backend`), the same objects
`rwkv-deploy generate` uses, for the step graph and, where the backend has one, the prefill graph.
The steps: every token stream step by step (`stream_compare`), greedy decoding on each side on its own
(`greedy`), the prefill graph chunk by chunk (`prefill_check`); then the thresholds decide (`thresholds`).
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rwkv_deploy import __version__
from rwkv_deploy.models import load_model
from rwkv_deploy.models.reference.base import RWKVModel
from rwkv_deploy.package.manifest import Manifest, sha256_file
from rwkv_deploy.package.names import PREFILL_GRAPH, STEP_GRAPH
from rwkv_deploy.runtime import DeploymentPackage
from rwkv_deploy.runtime.package import PackageFilesChanged

from .greedy import GreedyResult, compare_greedy
from .prefill_check import PrefillResult, compare_prefill
from .errors import ThresholdsNotMet, ValidationError
from .result import ValidateOptions, ValidationResult
from .sides import ArtifactSide, ReferenceSide
from .stream_compare import StreamResult, run_stream
from .streams import make_streams
from .thresholds import Check, Thresholds, evaluate, thresholds_for

__all__ = ["ThresholdsNotMet", "ValidateOptions", "ValidationError", "ValidationResult", "validate_package"]


def validate_package(
    package_dir: str | Path, checkpoint: str | Path, options: ValidateOptions = ValidateOptions(),
    progress: Callable[[str], None] = lambda stage: None,
) -> ValidationResult:
    """Compare the package (step graph, and prefill graph) with the PyTorch reference of `checkpoint`."""
    poly_log = _polygraphy_logger()
    if min(options.steps, options.batch, options.greedy_tokens) < 1:
        raise ValidationError("--steps, --batch and --greedy-tokens must be at least 1")
    package_dir, checkpoint = Path(package_dir), Path(checkpoint)
    timings: dict[str, float] = {}
    total = time.perf_counter()
    package = _open_package(package_dir, options.check_hashes)
    manifest = package.manifest
    thresholds = thresholds_for(manifest.graphs[STEP_GRAPH].precision)
    # Polygraphy logs every comparison (and errors for failing ones); the report says it all, once.
    with _torch_threads(options.threads), poly_log.verbosity(poly_log.CRITICAL):
        progress("loading the PyTorch reference")
        with _timed(timings, "load_reference"):
            eps = manifest.source.get("ln_x_eps")
            model = load_model(checkpoint, **({"ln_x_eps": eps} if eps is not None else {}))
        _check_same_model(model, manifest, checkpoint)
        streams = make_streams(manifest.model.vocab_size, package.tokenizer, options.steps, options.batch, options.seed)
        progress(f"opening the artifact ({options.backend})")
        with _timed(timings, "create_session"):
            artifact = ArtifactSide.open(options.backend, package, options.threads)
        reference = ReferenceSide(model, manifest)
        results: list[StreamResult] = []
        for stream in streams:
            progress(f"comparing {stream.name} tokens: {stream.steps} steps x {stream.batch} sequences")
            results.append(run_stream(reference, artifact, stream, thresholds))
            timings[f"stream_{stream.name}"] = round(results[-1].seconds, 3)
        progress(f"greedy decoding {options.greedy_tokens} tokens on each side")
        with _timed(timings, "greedy"):
            greedy = compare_greedy(reference, artifact, streams[-1], options.prompt_length, options.greedy_tokens)
        prefill = None
        if PREFILL_GRAPH in manifest.graphs and artifact.has_prefill:
            progress("comparing the prefill graph, chunk by chunk")
            with _timed(timings, "prefill"):
                prefill = compare_prefill(reference, artifact, streams[-1])
    timings["total"] = round(time.perf_counter() - total, 3)
    return ValidationResult(str(package_dir), str(checkpoint), manifest, options, thresholds, results, greedy,
                            _checks(results, greedy, prefill, thresholds), timings, versions(),
                            _checkpoint_notes(checkpoint, manifest) + _prefill_notes(manifest, artifact),
                            artifact.describe())


def _open_package(package_dir: Path, check_hashes: bool) -> DeploymentPackage:
    """The package as the runtime opens it (the trust boundary); a changed file names the way out (--no-verify,
    which skips the hashing only, never the path rules)."""
    try:
        return DeploymentPackage.open(package_dir, verify=check_hashes)
    except PackageFilesChanged as exc:
        raise ValidationError(f"{exc}; re-export, or pass --no-verify to validate the files as they are") from None


def _checks(results: list[StreamResult], greedy: GreedyResult, prefill: PrefillResult | None,
            thresholds: Thresholds) -> list[Check]:
    checks = [c for r in results for c in evaluate(r.name, r.metrics, thresholds, r.details)]
    if prefill is not None:
        checks += evaluate("prefill", prefill.metrics, thresholds, {m: prefill.describe() for m in prefill.metrics})
    return checks + evaluate(
        "greedy", {"greedy_divergence_margin": greedy.max_margin}, thresholds,
        {"greedy_divergence_margin": f"identical tokens per sequence {greedy.matched} of {greedy.tokens}"})


def _prefill_notes(manifest: Manifest, artifact: ArtifactSide) -> list[str]:
    if PREFILL_GRAPH not in manifest.graphs or artifact.has_prefill:
        return []
    return [f"the prefill graph was not compared: the {artifact.name} backend has no prefill "
            f"(it runs prompts one step at a time, as compared above)"]


def _check_same_model(model: RWKVModel, manifest: Manifest, checkpoint: Path) -> None:
    """A checkpoint other than the one exported would only show up as huge errors; say so plainly instead."""
    cfg, info = model.config, manifest.model
    ours = (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size)
    theirs = (info.version, info.n_layer, info.n_embd, info.vocab_size)
    if ours != theirs or model.state_spec().names != [e.name for e in manifest.state]:
        raise ValidationError(f"{checkpoint} is RWKV-{ours[0]} with {ours[1]} layers x {ours[2]}, vocab {ours[3]}, "
                              f"but the package was exported from RWKV-{theirs[0]} with {theirs[1]} layers x "
                              f"{theirs[2]}, vocab {theirs[3]}: pass the checkpoint the package was exported from")


def _checkpoint_notes(checkpoint: Path, manifest: Manifest) -> list[str]:
    expected = manifest.source.get("sha256")
    if not expected or not checkpoint.is_file() or sha256_file(checkpoint) == expected:
        return []
    return [f"{checkpoint.name} is not byte-identical to the exported checkpoint "
            f"({manifest.source.get('checkpoint')}); fine if it is the same weights in another format"]


def versions() -> dict[str, str]:
    import onnxruntime
    import polygraphy

    return {"rwkv_deploy": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__}


def _polygraphy_logger() -> Any:
    try:
        import onnxruntime  # noqa: F401  (the default backend; versions() names it)
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise ValidationError("validation needs polygraphy and onnxruntime: pip install polygraphy onnxruntime") from None
    return G_LOGGER


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Small steps run faster on one thread than on several busy ones; restores the caller's setting."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 3)
