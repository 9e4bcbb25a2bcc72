"""Run the PyTorch reference and the exported graph side by side on the same tokens and measure the gap.

Each side carries its own recurrent state: the artifact's state outputs are fed back as its next state
inputs, never the reference's, so rounding errors accumulate exactly as they would in deployment. At
every step the logits and every state tensor are compared. Then each side greedy-decodes from the same
prompts on its own, which shows whether the errors are large enough to change generated text.

Polygraphy runs the artifact (`OnnxrtRunner` over `SessionFromOnnx`, CPU provider) and gives the
per-step verdict on the logits (`SimpleCompareFunc`). Its `Comparator.run` does not fit the loop: it
feeds every runner the same inputs from one data loader, whereas here each side's next state input is its
own previous output, and the reference is a PyTorch module, not a Polygraphy runner.
"""

from __future__ import annotations

import contextlib
import platform
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rwkv_deploy import __version__
from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import Manifest, read_manifest, sha256_file, verify_files
from rwkv_deploy.models import load_model
from rwkv_deploy.models.reference.base import RWKVModel
from rwkv_deploy.tokenization import Tokenizer, load_tokenizer

from . import metrics
from .prefill_check import compare_prefill
from .streams import TokenStream, make_streams, prompt_tokens
from .thresholds import Check, Thresholds, evaluate, thresholds_for

Outputs = dict[str, np.ndarray]  # graph output name -> value
State = list[np.ndarray]
REFERENCE_NAME = "pytorch-fp32"
ARTIFACT_NAME = "onnxruntime-cpu"


class ValidationError(RwkvDeployError):
    """The validation could not run (bad package, wrong checkpoint, missing dependency)."""

    exit_code = 2


class ThresholdsNotMet(RwkvDeployError):
    """The validation ran and the artifact is not faithful enough: exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class ValidateOptions:
    steps: int = 256
    batch: int = 4
    seed: int = 0
    greedy_tokens: int = 32
    prompt_length: int = 16
    check_hashes: bool = True
    torch_threads: int | None = None  # None: leave PyTorch's setting alone
    backend: str = "onnxruntime"  # "onnxruntime" (through Polygraphy) or "tensorrt" (the package's engine)


# -- the two sides --------------------------------------------------------------------------------------------


class Side(ABC):
    """One implementation of the step graph, speaking the graph's I/O names and numpy arrays."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.state_outputs = [e.output for e in manifest.state]

    @abstractmethod
    def init_state(self, batch: int) -> State: ...

    @abstractmethod
    def step(self, tokens: np.ndarray, state: State) -> Outputs: ...

    def advance(self, tokens: np.ndarray, state: State) -> tuple[Outputs, State]:
        """One step: all outputs by name, and the state to feed to the next step (this side's own)."""
        out = self.step(tokens, state)
        return out, [out[name] for name in self.state_outputs]


class ReferenceSide(Side):
    """The PyTorch fp32 reference, its outputs labelled with the graph's output names."""

    def __init__(self, model: RWKVModel, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.model = model

    def init_state(self, batch: int) -> State:
        return [t.numpy() for t in self.model.init_state(batch)]

    @torch.no_grad()
    def step(self, tokens: np.ndarray, state: State) -> Outputs:
        logits, new_state = self.model.step(torch.from_numpy(tokens), [torch.from_numpy(s) for s in state])
        return {self.manifest.logits_output: logits.numpy(),
                **{name: t.numpy() for name, t in zip(self.state_outputs, new_state)}}


class ArtifactSide(Side):
    """The ONNX graph in ONNX Runtime through a Polygraphy runner, with the fresh state the manifest describes."""

    def __init__(self, runner: Any, manifest: Manifest, package_dir: Path) -> None:
        super().__init__(manifest)
        self.runner = runner
        self.package_dir = package_dir

    def init_state(self, batch: int) -> State:
        """What any runtime builds from the manifest alone: a constant fill, or the tuned state from init_file."""
        state = []
        for entry in self.manifest.state:
            shape = [batch if d == "batch" else int(d) for d in entry.shape]
            if entry.init_file:
                with np.load(self.package_dir / entry.init_file) as tuned:
                    state.append(np.ascontiguousarray(np.broadcast_to(tuned[entry.name], shape), dtype=entry.dtype))
            else:
                state.append(np.full(shape, entry.init, dtype=entry.dtype))
        return state

    def step(self, tokens: np.ndarray, state: State) -> Outputs:
        feed = OrderedDict([(self.manifest.token_input, tokens)])
        feed.update((entry.input, s) for entry, s in zip(self.manifest.state, state))
        # ONNX Runtime checks names, dtypes and shapes itself; Polygraphy's own check would double the
        # per-step overhead on small models.
        try:
            return dict(self.runner.infer(feed, check_inputs=False))
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ValidationError(f"ONNX Runtime failed to run the graph: {_first_line(exc)}") from None


class BackendSide(Side):
    """A runtime step backend (`rwkv_deploy.runtime.backends`, e.g. TensorRT) as the artifact side.

    The state it hands on is the backend's own (device tensors for TensorRT), so it stays where that
    backend keeps it between steps; only the compared outputs are copied to the host."""

    def __init__(self, backend: Any, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.backend = backend
        self._state_names = tuple(e.name for e in manifest.state)

    def init_state(self, batch: int) -> State:
        return list(self.backend.fresh_state(batch).values)

    def _run(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, list[Any]]:
        from rwkv_deploy.runtime.state import RecurrentState

        logits, new_state = self.backend.step(tokens, RecurrentState(self._state_names, tuple(state)))
        return logits, list(new_state.values)

    def step(self, tokens: np.ndarray, state: State) -> Outputs:
        return self._outputs(*self._run(tokens, state))

    def advance(self, tokens: np.ndarray, state: State) -> tuple[Outputs, State]:
        logits, new_state = self._run(tokens, state)
        return self._outputs(logits, new_state), new_state

    def _outputs(self, logits: np.ndarray, values: list[Any]) -> Outputs:
        from rwkv_deploy.runtime.state import host

        return {self.manifest.logits_output: np.asarray(logits),
                **{name: host(v) for name, v in zip(self.state_outputs, values)}}


# -- per-step comparison --------------------------------------------------------------------------------------


class PolygraphyLogitsCheck:
    """Per-step pass/fail of the logits with Polygraphy's SimpleCompareFunc (|dlogit| <= atol everywhere).

    Only the logits go through it: SimpleCompareFunc computes min/max/mean/median of the absolute and
    relative error of every output it sees (measured ~15x the cost of metrics.max_abs_error +
    max_relative_error), which for the dozens of large state tensors of a real model would dominate
    the run. State tensors are judged by `metrics` alone.
    """

    def __init__(self, logits_name: str, atol: float) -> None:
        from polygraphy.comparator.compare import SimpleCompareFunc
        from polygraphy.comparator.struct import AccuracyResult

        self.logits_name = logits_name
        # rtol 0: Polygraphy's relative error divides by |reference| + 2e-16, meaningless near zero logits
        self.func = SimpleCompareFunc(check_error_stat="elemwise", atol=atol, rtol=0.0)
        self.pair = (ARTIFACT_NAME, REFERENCE_NAME)
        self.results = AccuracyResult({self.pair: []})

    def __call__(self, ref: Outputs, art: Outputs) -> bool:
        from polygraphy.comparator.struct import IterationResult

        name = self.logits_name
        # SimpleCompareFunc formats both arrays for a verbose log line even when that line is not shown;
        # with numpy summarising every array that costs microseconds instead of ~10 ms per step.
        with np.printoptions(threshold=1, edgeitems=1):
            verdict = self.func(IterationResult({name: art[name]}, runner_name=ARTIFACT_NAME),
                                IterationResult({name: ref[name]}, runner_name=REFERENCE_NAME))
        self.results[self.pair].append(verdict)
        return bool(verdict[name])

    def failed_steps(self) -> list[int]:
        return [t for t, verdict in enumerate(self.results[self.pair]) if not all(map(bool, verdict.values()))]


@dataclass
class StreamResult:
    """Everything measured on one token stream: summary numbers, per-state-tensor numbers, per-step curves."""

    name: str
    description: str
    steps: int
    batch: int
    metrics: dict[str, float]
    state: dict[str, dict[str, float]]
    per_step: dict[str, list[float]]
    details: dict[str, str]
    seconds: float


class StreamLog:
    """Accumulates per-step metrics of one stream, then reduces them to a StreamResult."""

    CURVES = ("logits_max_abs", "logits_max_rel", "kl_mean", "kl_max", "top1_agreement", "state_max_rel")

    def __init__(self, logits_name: str, state_names: dict[str, str]) -> None:
        self.logits_name = logits_name
        self.state_names = state_names  # output name -> state tensor name
        self.curves: dict[str, list[float]] = {k: [] for k in self.CURVES}
        self.state_abs: dict[str, list[float]] = {n: [] for n in state_names.values()}
        self.state_rel: dict[str, list[float]] = {n: [] for n in state_names.values()}
        self.kl_rows: list[np.ndarray] = []
        self.top1_rows: list[np.ndarray] = []
        self.nonfinite = 0

    def add(self, ref: Outputs, art: Outputs) -> None:
        r, a = ref[self.logits_name], art[self.logits_name]
        kl, top1 = metrics.kl_divergence(r, a), metrics.top1_matches(r, a)
        self.kl_rows.append(kl)
        self.top1_rows.append(top1)
        self.curves["logits_max_abs"].append(metrics.max_abs_error(r, a))
        self.curves["logits_max_rel"].append(metrics.max_relative_error(r, a))
        self.curves["kl_mean"].append(float(np.mean(kl)))
        self.curves["kl_max"].append(float(np.max(kl)))
        self.curves["top1_agreement"].append(float(np.mean(top1)))
        self.nonfinite += metrics.count_nonfinite(a)
        for output, name in self.state_names.items():
            self.state_abs[name].append(metrics.max_abs_error(ref[output], art[output]))
            self.state_rel[name].append(metrics.max_relative_error(ref[output], art[output]))
            self.nonfinite += metrics.count_nonfinite(art[output])
        self.curves["state_max_rel"].append(_nanmax([v[-1] for v in self.state_rel.values()]))

    def result(self, stream: TokenStream, thresholds: Thresholds, failed_steps: list[int], seconds: float) -> StreamResult:
        logit_errors = np.asarray(self.curves["logits_max_abs"])
        kl, top1 = np.concatenate(self.kl_rows), np.concatenate(self.top1_rows)
        state = {name: {"max_abs": _nanmax(self.state_abs[name]), "max_rel": _nanmax(self.state_rel[name])}
                 for name in self.state_abs}
        worst_state = max(state, key=lambda n: _sort_key(state[n]["max_rel"]), default="")
        summary = {
            "logits_max_abs": _nanmax(logit_errors),
            "logits_max_rel": _nanmax(self.curves["logits_max_rel"]),
            "state_max_abs": _nanmax([s["max_abs"] for s in state.values()]),
            "state_max_rel": state[worst_state]["max_rel"] if worst_state else 0.0,
            "kl_mean": float(np.mean(kl)),
            "kl_max": float(np.max(kl)),
            "top1_agreement": float(np.mean(top1)),
            "growth_slope": metrics.growth_slope(logit_errors, thresholds.growth_floor),
            "growth_ratio": metrics.quarter_growth(logit_errors, thresholds.growth_floor),
            "nonfinite_values": float(self.nonfinite),
            "steps_out_of_tolerance": float(len(failed_steps)),
        }
        details = {"state_max_rel": f"worst tensor {worst_state}" if worst_state else "",
                   "steps_out_of_tolerance": _first_failures(failed_steps, logit_errors, thresholds)}
        return StreamResult(stream.name, stream.description, stream.steps, stream.batch, summary, state,
                            dict(self.curves), details, seconds)


def _nanmax(values: Any) -> float:
    """max that returns NaN when any value is NaN (np.max does, Python's max does not)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.max(arr)) if arr.size else 0.0


def _sort_key(value: float) -> float:
    return float("inf") if np.isnan(value) else value


def _first_failures(failed: list[int], logit_errors: np.ndarray, thresholds: Thresholds) -> str:
    if not failed:
        return ""
    t = failed[0]
    return (f"Polygraphy SimpleCompareFunc, |dlogit| <= {thresholds.logits_max_abs:g}: first failing step {t} "
            f"(max |dlogit| {logit_errors[t]:.3g}), {len(failed)}/{logit_errors.size} steps failed")


def run_stream(reference: Side, artifact: Side, stream: TokenStream, thresholds: Thresholds) -> StreamResult:
    """Both sides through every step of `stream`, each on its own state, comparing all outputs each step."""
    start = time.perf_counter()
    manifest = reference.manifest
    log = StreamLog(manifest.logits_output, {e.output: e.name for e in manifest.state})
    step_check = PolygraphyLogitsCheck(manifest.logits_output, thresholds.logits_max_abs)
    ref_state, art_state = reference.init_state(stream.batch), artifact.init_state(stream.batch)
    for tokens in stream.tokens:
        ref_out, ref_state = reference.advance(tokens, ref_state)
        art_out, art_state = artifact.advance(tokens, art_state)
        log.add(ref_out, art_out)
        step_check(ref_out, art_out)
    return log.result(stream, thresholds, step_check.failed_steps(), time.perf_counter() - start)


# -- greedy decoding ------------------------------------------------------------------------------------------


@dataclass
class GreedyResult:
    """Each side decodes on its own from the same prompts; `matched[b]` = identical tokens before divergence,
    `margins[b]` = how much the reference preferred its token where they parted (0 if they never did)."""

    prompt_stream: str
    prompt_length: int
    tokens: int
    matched: list[int]
    margins: list[float]
    reference_tokens: list[list[int]]
    artifact_tokens: list[list[int]]

    @property
    def min_fraction(self) -> float:
        return min(self.matched) / self.tokens

    @property
    def max_margin(self) -> float:
        return _nanmax(self.margins)


def greedy_decode(side: Side, prompts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Feed `prompts` [B, P], then `n` times append the argmax token and feed it back.

    Returns the tokens [B, n] and the logits [n, B, V] each one was chosen from.
    """
    state = side.init_state(prompts.shape[0])
    for t in range(prompts.shape[1]):
        out, state = side.advance(np.ascontiguousarray(prompts[:, t]), state)
    tokens, logits = [], []
    for i in range(n):
        logits.append(out[side.manifest.logits_output])
        tokens.append(np.argmax(logits[-1], axis=-1).astype(np.int64))
        if i + 1 < n:
            out, state = side.advance(tokens[-1], state)
    return np.stack(tokens, axis=1), np.stack(logits)


def compare_greedy(reference: Side, artifact: Side, stream: TokenStream, prompt_length: int, n: int) -> GreedyResult:
    prompts = prompt_tokens(stream, min(prompt_length, stream.steps))
    (ref, ref_logits), (art, _) = greedy_decode(reference, prompts, n), greedy_decode(artifact, prompts, n)
    return GreedyResult(stream.name, prompts.shape[1], n, metrics.matching_prefix_length(ref, art).tolist(),
                        metrics.divergence_margins(ref_logits, ref, art).tolist(), ref.tolist(), art.tolist())


# -- the whole validation -------------------------------------------------------------------------------------


@dataclass
class ValidationResult:
    package_dir: str
    checkpoint: str
    manifest: Manifest
    options: ValidateOptions
    thresholds: Thresholds
    streams: list[StreamResult]
    greedy: GreedyResult
    checks: list[Check]
    timings: dict[str, float]
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def worst(self, metric: str, lowest: bool = False) -> float:
        """The worst value of a stream metric over all streams (NaN wins)."""
        values = [s.metrics[metric] for s in self.streams]
        if any(np.isnan(v) for v in values):
            return float("nan")
        return min(values) if lowest else max(values)

    def summary_line(self) -> str:
        m = self.manifest
        return (f"{'PASS' if self.passed else 'FAIL'}: RWKV-{m.model.version} {m.graphs['step'].precision} artifact vs "
                f"PyTorch fp32, {self.options.steps} steps x {self.options.batch} sequences x {len(self.streams)} "
                f"stream(s): max |dlogit| {self.worst('logits_max_abs'):.3g}, "
                f"KL mean {self.worst('kl_mean'):.3g} (max {self.worst('kl_max'):.3g}), "
                f"top-1 {100 * self.worst('top1_agreement', lowest=True):.2f}%, "
                f"greedy {min(self.greedy.matched)}/{self.greedy.tokens} identical")


def versions() -> dict[str, str]:
    import onnxruntime
    import polygraphy

    return {"rwkv_deploy": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__}


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


def _check_package(package_dir: Path, manifest: Manifest, check_hashes: bool) -> None:
    if "step" not in manifest.graphs:
        raise ValidationError(f"{package_dir}: the manifest lists no 'step' graph")
    if check_hashes:
        problems = verify_files(package_dir, manifest)
        if problems:
            raise ValidationError(f"{problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
                                  + "; re-export, or pass --skip-hash-check to validate the files as they are")


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


def package_tokenizer(package_dir: Path, manifest: Manifest) -> Tokenizer | None:
    """The package's own tokenizer (from its files), or None when it ships none."""
    kind = manifest.tokenizer.kind
    if kind == "none":
        return None
    path = package_dir / manifest.tokenizer.files[0] if manifest.tokenizer.files else None
    return load_tokenizer(kind, path)


def _open_artifact(package_dir: Path, manifest: Manifest, backend: str) -> tuple[Side, Callable[[], None]]:
    """The artifact side for `backend` and the function that releases it."""
    if backend == "onnxruntime":
        runner = _open_runner(package_dir / manifest.graphs["step"].path)
        return ArtifactSide(runner, manifest, package_dir), runner.deactivate
    from rwkv_deploy.runtime.backends import make_backend
    from rwkv_deploy.runtime.package import DeploymentPackage

    # hashes were checked (or skipped on request) above; the backend raises its own one-line errors
    step_backend = make_backend(backend, DeploymentPackage.open(package_dir, verify=False))
    return BackendSide(step_backend, manifest), lambda: None


def _open_runner(graph_path: Path) -> Any:
    """An active Polygraphy OnnxrtRunner on the CPU provider (its session threads = the usable CPUs)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    runner = OnnxrtRunner(SessionFromOnnx(str(graph_path), providers=["cpu"]), name=ARTIFACT_NAME)
    try:
        runner.activate()
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise ValidationError(f"{graph_path}: ONNX Runtime cannot load the graph ({_first_line(exc)})") from None
    return runner


def _polygraphy_logger() -> Any:
    try:
        import onnxruntime  # noqa: F401  (polygraphy imports it lazily; fail here, with the fix)
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise ValidationError("validation needs polygraphy and onnxruntime: pip install polygraphy onnxruntime") from None
    return G_LOGGER


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def validate_package(
    package_dir: str | Path, checkpoint: str | Path, options: ValidateOptions = ValidateOptions(),
    progress: Callable[[str], None] = lambda stage: None,
) -> ValidationResult:
    """Compare the package's step graph with the PyTorch reference of `checkpoint`; see the module docstring."""
    poly_log = _polygraphy_logger()
    if min(options.steps, options.batch, options.greedy_tokens) < 1:
        raise ValidationError("--steps, --batch and --greedy-tokens must be at least 1")
    package_dir, checkpoint = Path(package_dir), Path(checkpoint)
    timings: dict[str, float] = {}
    total = time.perf_counter()
    manifest = read_manifest(package_dir)
    _check_package(package_dir, manifest, options.check_hashes)
    graph = manifest.graphs["step"]
    thresholds = thresholds_for(graph.precision)
    # Polygraphy logs every comparison (and errors for failing ones); the report says it all, once.
    with _torch_threads(options.torch_threads), poly_log.verbosity(poly_log.CRITICAL):
        progress("loading the PyTorch reference")
        with _timed(timings, "load_reference"):
            eps = manifest.source.get("ln_x_eps")
            model = load_model(checkpoint, **({"ln_x_eps": eps} if eps is not None else {}))
        _check_same_model(model, manifest, checkpoint)
        streams = make_streams(manifest.model.vocab_size, package_tokenizer(package_dir, manifest),
                               options.steps, options.batch, options.seed)
        progress(f"opening the artifact ({options.backend})")
        with _timed(timings, "create_session"):
            artifact, close = _open_artifact(package_dir, manifest, options.backend)
        try:
            reference = ReferenceSide(model, manifest)
            results = []
            for stream in streams:
                progress(f"comparing {stream.name} tokens: {stream.steps} steps x {stream.batch} sequences")
                results.append(run_stream(reference, artifact, stream, thresholds))
                timings[f"stream_{stream.name}"] = round(results[-1].seconds, 3)
            progress(f"greedy decoding {options.greedy_tokens} tokens on each side")
            with _timed(timings, "greedy"):
                greedy = compare_greedy(reference, artifact, streams[-1], options.prompt_length, options.greedy_tokens)
            prefill = None
            if "prefill" in manifest.graphs and options.backend == "onnxruntime":
                progress("comparing the prefill graph, chunk by chunk")
                with _timed(timings, "prefill"):
                    prefill = compare_prefill(model, manifest, package_dir, streams[-1])
        finally:
            close()
    checks = [c for r in results for c in evaluate(r.name, r.metrics, thresholds, r.details)]
    if prefill is not None:
        checks += evaluate("prefill", prefill.metrics, thresholds,
                           {m: prefill.describe() for m in prefill.metrics})
    checks += evaluate("greedy", {"greedy_divergence_margin": greedy.max_margin}, thresholds,
                       {"greedy_divergence_margin": f"identical tokens per sequence {greedy.matched} of {greedy.tokens}"})
    timings["total"] = round(time.perf_counter() - total, 3)
    return ValidationResult(str(package_dir), str(checkpoint), manifest, options, thresholds, results, greedy,
                            checks, timings, versions(), _checkpoint_notes(checkpoint, manifest))
