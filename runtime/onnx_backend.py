"""One recurrent step of a package's ONNX graph with ONNX Runtime (CPU, or CUDA when available).

On CUDA the state never leaves the GPU: state tensors are bound as device `OrtValue`s and the new
state is bound to fresh device outputs (ORT's arena hands back freed blocks, so this costs no
allocations in steady state and never overwrites a state the caller still holds); only the token
ids go up and the logits come down. On the CPU, a plain `run` on numpy arrays measured faster than
IOBinding for small models, and numpy state is what `RecurrentState` works with anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.names import PREFILL_GRAPH, PREFILL_TOKENS_INPUT, STEP_GRAPH
from rwkv_deploy.package.trust import PackageFilesChanged

from .package import DeploymentPackage, PackageError
from .cpu_graph import chosen_cpu_graph
from .pinned_graph import pinned_file_session, pinned_session
from .state import RecurrentState, StateError, host

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

Provider = str | tuple[str, dict[str, Any]]


class BackendError(RefusedError):
    """ONNX Runtime cannot run the package as asked (e.g. a provider that is not installed)."""


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, always CPU as the fallback."""
    return [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]


MAX_THREADS = 256  # intra-op threads one session may ask for (each is an OS thread; 4,000 is a typo, not a plan)


def session_options(threads: int | None, spin_wait: bool = False) -> ort.SessionOptions:
    """All graph optimizations; `threads` intra-op threads (None: ORT's default, one per core); no spinning
    unless `spin_wait`.

    ORT's worker threads spin-wait between ops by default. That buys a quiet machine about a fifth of the
    step time at 2 threads (each parallel op otherwise wakes a sleeping worker, ~20 us, about 150 times per
    step), and costs as much when the cores are shared: the spinning threads take the CPU the others need.
    Measured (RWKV-7 0.1B shape, int8, 2 threads, 2-core machine; docs/bench.md "Spin-waiting threads"):
    quiet 16.5 ms no-spin vs 13.6 ms spinning; beside one busy process 18.9 vs 23.5 ms. Servers share their
    cores, so no spinning is the default; `spin_wait=True` is for a machine given to the model. (A CPU graph's
    own operators run their loops on the operator library's workers instead, which stay awake only between a
    step's loops: cpu_ops.start_workers.)"""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops per step: nothing to overlap
    options.inter_op_num_threads = 1
    spin = "1" if spin_wait else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            raise BackendError(f"threads must be 1 to {MAX_THREADS}, got {threads}")
        options.intra_op_num_threads = threads
    return options


@contextmanager
def _ort_errors(graph: Any) -> Iterator[None]:
    """ONNX Runtime's own exceptions (an allocation failure, a kernel error) as one-line BackendErrors."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"{graph}: onnxruntime failed to run the graph ({first[:300]})") from None


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxStepBackend:
    """`step(tokens, state) -> (logits, new_state)` on a package's step graph; implements `StepBackend`."""

    def __init__(self, package: DeploymentPackage, providers: Sequence[Provider] | None = None,
                 threads: int | None = None, spin_wait: bool = False, cpu_graph: str = "off",
                 cpu_graph_file: str | Path | None = None, cpu_prefill_file: str | Path | None = None) -> None:
        """`cpu_graph`: "auto", "on" or "off": whether to step with the package's CPU graph (runtime/cpu_graph.py),
        and prefill with its CPU prefill graph when it has one. `cpu_graph_file` / `cpu_prefill_file`: CPU graphs
        of this package's step / prefill graph outside it (bench's work folder; trusted local files, not hashed) to
        run instead. Either runs with rwkv-deploy's CPU operator library; the graph's inputs and outputs are
        checked against the manifest."""
        self.package = package
        providers = list(providers) if providers else default_providers()
        missing = [_provider_name(p) for p in providers if _provider_name(p) not in ort.get_available_providers()]
        if missing:
            raise BackendError(f"execution provider {missing[0]} is not available in this onnxruntime "
                               f"(available: {', '.join(ort.get_available_providers())})")
        self._threads, self._spin_wait = threads, spin_wait  # the prefill graph's session gets the same options
        entry = chosen_cpu_graph(package, cpu_graph, _provider_name(providers[0]))
        # prompts take the package's CPU prefill graph when the step takes its CPU graph (same operators, one
        # weights file), or the one beside a given CPU graph file
        prefill_entry = package.manifest.cpu_graphs.get(PREFILL_GRAPH) if entry is not None else None
        self._cpu_prefill: tuple[str, str | None] | Path | None = (
            Path(cpu_prefill_file) if cpu_prefill_file is not None
            else (prefill_entry.path, prefill_entry.external_data) if prefill_entry is not None else None)
        self.graph_path = (Path(cpu_graph_file) if cpu_graph_file is not None
                           else package.directory / entry.path if entry is not None else package.graph_path)
        self.runs_cpu_graph = cpu_graph_file is not None or entry is not None
        try:
            options = session_options(threads, spin_wait)
            if self.runs_cpu_graph:
                from . import cpu_ops

                options.register_custom_ops_library(str(cpu_ops.require_library()))
                cpu_ops.start_workers(threads)
            if cpu_graph_file is not None:
                self.session = ort.InferenceSession(str(cpu_graph_file), options, providers=providers)
            elif entry is not None:
                self.session = pinned_file_session(package, entry.path, entry.external_data, options, providers)
            else:
                self.session = pinned_session(package, STEP_GRAPH, options, providers)
        except (PackageFilesChanged, RefusedError):
            raise
        except Exception as exc:  # ORT raises its own exception types, none of them exported stably
            raise BackendError(f"{self.graph_path}: onnxruntime cannot load the graph ({exc})") from None
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        self._device_id = int(self.session.get_provider_options().get(CUDA, {}).get("device_id", 0))
        self._check_graph_io()
        manifest = package.manifest
        self._entries = manifest.state
        self._outputs = [manifest.logits_output] + [e.output for e in manifest.state]
        self._prefill_session: ort.InferenceSession | None = None

    @property
    def vocab_size(self) -> int:
        return self.package.vocab_size

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return self.package.fresh_state(batch)

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """Feed one token per sequence: logits float32 [batch, vocab] and the state after it.

        Raises InputError / StateError (both ValueErrors) for ids outside the vocabulary or a state
        of the wrong model, count, shape or dtype."""
        tokens = self.package.check_tokens(tokens)
        if state.graph_sha256 not in (None, self.package.graph_sha256):
            raise StateError("state belongs to another model (its graph sha256 differs from this package's)")
        state.check(self._entries, batch=len(tokens))
        run = self._run_on_device if self.device == "cuda" else self._run_on_host
        with _ort_errors(self.graph_path):
            logits, values = run(tokens, state.values)
        return logits, state.replace(values)

    @property
    def has_prefill(self) -> bool:
        return self.package.prefill_graph_path is not None

    def prefill(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """Feed T tokens per sequence in one call of the prefill graph: tokens int64 [batch, T] ->
        logits [batch, vocab] after the last token, and the state after it.

        Needs a package exported with `--prefill` (`has_prefill`); its session is created on first use."""
        array = np.asarray(tokens)
        if array.ndim != 2 or array.shape[1] == 0:
            raise StateError(f"prefill tokens must be [batch, T] with T >= 1, got shape {list(array.shape)}")
        flat = self.package.check_tokens(array.reshape(-1)).reshape(array.shape)
        if state.graph_sha256 not in (None, self.package.graph_sha256):
            raise StateError("state belongs to another model (its graph sha256 differs from this package's)")
        state.check(self._entries, batch=array.shape[0])
        feeds = {PREFILL_TOKENS_INPUT: flat}
        feeds.update({e.input: host(v) for e, v in zip(self._entries, state.values)})
        session = self._prefill_graph()
        with _ort_errors(self.package.prefill_graph_path):
            logits, *values = session.run(self._outputs, feeds)
        return (logits[:, -1] if logits.ndim == 3 else logits), state.replace(values)

    def _prefill_graph(self) -> ort.InferenceSession:
        if self._prefill_session is None:
            path = self.package.prefill_graph_path
            if path is None:
                raise BackendError(f"{self.package.directory}: the package has no prefill graph "
                                   f"(export it with `rwkv-deploy export --prefill`)")
            try:
                options = session_options(self._threads, self._spin_wait)
                providers = self.session.get_providers()
                if self._cpu_prefill is not None:
                    from . import cpu_ops

                    options.register_custom_ops_library(str(cpu_ops.require_library()))
                if isinstance(self._cpu_prefill, Path):
                    path = self._cpu_prefill
                    self._prefill_session = ort.InferenceSession(str(path), options, providers=providers)
                elif self._cpu_prefill is not None:
                    path = self.package.directory / self._cpu_prefill[0]
                    self._prefill_session = pinned_file_session(self.package, *self._cpu_prefill, options, providers)
                else:
                    self._prefill_session = pinned_session(self.package, PREFILL_GRAPH, options, providers)
            except PackageFilesChanged:
                raise
            except Exception as exc:  # ORT raises its own exception types
                raise BackendError(f"{path}: onnxruntime cannot load the graph ({exc})") from None
        return self._prefill_session

    def _run_on_host(self, tokens: np.ndarray, values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        feeds = {self.package.manifest.token_input: tokens}
        feeds.update({e.input: host(v) for e, v in zip(self._entries, values)})
        logits, *new_values = self.session.run(self._outputs, feeds)
        return logits, new_values

    def _run_on_device(self, tokens: np.ndarray, values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.package.manifest.token_input, tokens)
        for entry, value in zip(self._entries, values):
            binding.bind_ortvalue_input(entry.input, self._on_device(value))
        binding.bind_output(self.package.manifest.logits_output, "cpu")
        for entry in self._entries:
            binding.bind_output(entry.output, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        logits, *new_values = binding.get_outputs()
        return logits.numpy(), new_values

    def _on_device(self, value: Any) -> ort.OrtValue:
        if isinstance(value, ort.OrtValue) and value.device_name() == "cuda":
            return value
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host(value)), "cuda", self._device_id)

    def _check_graph_io(self) -> None:
        """Refuse a graph whose inputs/outputs are not the ones the manifest promises."""
        manifest = self.package.manifest
        expected_in = {manifest.token_input, *(e.input for e in manifest.state)}
        expected_out = {manifest.logits_output, *(e.output for e in manifest.state)}
        actual_in = {i.name for i in self.session.get_inputs()}
        actual_out = {o.name for o in self.session.get_outputs()}
        for kind, expected, actual in (("input", expected_in, actual_in), ("output", expected_out, actual_out)):
            if expected != actual:
                diff = sorted(expected ^ actual)
                raise PackageError(f"{self.graph_path}: graph {kind}s do not match the manifest "
                                   f"(differ in {', '.join(diff[:4])})")
