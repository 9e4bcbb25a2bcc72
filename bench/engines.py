"""The things `bench` times, behind one small interface: this project's exported package, the PyTorch
reference model, BlinkDL's `rwkv` package (cpu fp32), rwkv.cpp, llama.cpp and ONNX Runtime GenAI. Each runs in its own worker process
(`bench.worker`), so its peak memory and thread settings are its own."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .options import DEPLOY, DEPLOY_CPU, DEPLOY_CPU_SPIN, DEPLOY_SPIN, GENAI, LLAMACPP, RWKV_PACKAGE, RWKVCPP, TORCH_REFERENCE
from .timing import Timing, time_calls

__all__ = ["DEPLOY", "DEPLOY_CPU", "DEPLOY_CPU_SPIN", "DEPLOY_SPIN", "RWKV_PACKAGE", "RWKVCPP", "TORCH_REFERENCE", "Engine", "DeployEngine", "TorchReferenceEngine",
           "RwkvPackageEngine", "RwkvCppEngine", "LlamaCppEngine", "GenaiEngine"]


class Engine(ABC):
    name: str
    max_decode_batch: int | None = None  # None: any batch

    def __init__(self, vocab_size: int, seed: int) -> None:
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)

    def tokens(self, *shape: int) -> np.ndarray:
        return self.rng.integers(0, self.vocab_size, shape, dtype=np.int64)

    @abstractmethod
    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        """A callable that runs one decode step of `batch` sequences, carrying its own state forward."""

    @abstractmethod
    def prefill_call(self, length: int) -> Callable[[], None]:
        """A callable that feeds `length` tokens of one sequence from a fresh state (the engine's fastest way)."""

    @abstractmethod
    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [T, V] after each of `tokens`, fed one at a time to one sequence from a fresh state."""

    def decode(self, batch: int, min_seconds: float, state: Any = None) -> Timing:
        return time_calls(self.decode_call(batch, state), min_seconds, warmup=3)

    def prefill(self, length: int, min_seconds: float) -> Timing:
        return time_calls(self.prefill_call(length), min_seconds, min_calls=2, warmup=2)


class DeployEngine(Engine):
    """A package through the runtime (`--backend`, ONNX Runtime by default): the step graph for decode,
    the prefill graph when the package has one (else one step per token)."""

    name = DEPLOY

    def __init__(self, package_dir: Path, backend: str, threads: int, vocab_size: int, seed: int,
                 spin_wait: bool = False, cpu_graph: Path | None = None, cpu_prefill: Path | None = None) -> None:
        super().__init__(vocab_size, seed)
        from rwkv_deploy.runtime import DeploymentPackage
        from rwkv_deploy.runtime.backends import cpu_options, make_backend

        self.package = DeploymentPackage.open(package_dir, verify=False)
        extra: dict[str, Path] = {}  # the CPU step graph (DEPLOY_CPU) and CPU prefill graph, when made
        if cpu_graph is not None:
            extra["cpu_graph_file"] = cpu_graph
        if cpu_prefill is not None:
            extra["cpu_prefill_file"] = cpu_prefill
        self.backend = make_backend(backend, self.package, **cpu_options(backend, threads, spin_wait), **extra)

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        current = [state if state is not None else self.backend.fresh_state(batch)]

        def call() -> None:
            _, current[0] = self.backend.step(self.tokens(batch), current[0])
        return call

    def prefill_call(self, length: int) -> Callable[[], None]:
        from rwkv_deploy.runtime import Generator

        generator = Generator(self.backend)
        tokens = self.tokens(length).tolist()
        return lambda: generator.prefill(tokens)

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        from rwkv_deploy.runtime import stream_logits

        return stream_logits(self.backend, tokens)

    def load_state(self, path: Path) -> Any:
        """A context state made by any precision's package of the same model: the tensors are the same
        fp32 state, so it is taken without the state file's per-graph check (`RecurrentState.load`)."""
        from rwkv_deploy.runtime import RecurrentState

        names = tuple(e.name for e in self.package.manifest.state)
        with np.load(path) as data:
            values = tuple(data[f"s{k:04d}"] for k in range(len(names)))
        state = RecurrentState(names, values)
        state.check(self.package.manifest.state, state.batch)
        return state

    def context_states(self, lengths: list[int], chunk: int, out_dir: Path) -> dict[int, str]:
        """Feed one long random sequence and save the state after each of `lengths` tokens (.npz)."""
        from rwkv_deploy.runtime import Generator

        generator, state, fed, saved = Generator(self.backend), None, 0, {}
        for length in sorted(lengths):
            while fed < length:
                n = min(chunk, length - fed)
                _, state = generator.prefill(self.tokens(n).tolist(), state)
                fed += n
            path = out_dir / f"context-{length}.npz"
            np.savez(path, **{f"s{k:04d}": v for k, v in enumerate(state.numpy().values)})
            saved[length] = str(path)
        return saved


class TorchReferenceEngine(Engine):
    """The project's PyTorch reference model in fp32 (the model every export is validated against)."""

    name = TORCH_REFERENCE

    def __init__(self, checkpoint: Path, vocab_size: int, seed: int) -> None:
        super().__init__(vocab_size, seed)
        import torch
        from rwkv_deploy.models import load_model

        self.torch = torch
        self.model = load_model(checkpoint).eval()

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        current = [self.model.init_state(batch)]

        def call() -> None:
            with self.torch.no_grad():
                _, current[0] = self.model.step(self.torch.from_numpy(self.tokens(batch)), current[0])
        return call

    def prefill_call(self, length: int) -> Callable[[], None]:
        tokens = self.torch.from_numpy(self.tokens(1, length))

        def call() -> None:
            with self.torch.no_grad():
                self.model(tokens, self.model.init_state(1), last_only=True)
        return call

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        return self.model.stream_logits(tokens)


class RwkvPackageEngine(Engine):
    """BlinkDL's `rwkv` package, strategy "cpu fp32", its JIT on (its default): one sequence at a time."""

    name = RWKV_PACKAGE
    max_decode_batch = 1

    def __init__(self, checkpoint: Path, version: str, vocab_size: int, seed: int) -> None:
        super().__init__(vocab_size, seed)
        os.environ.setdefault("RWKV_CUDA_ON", "0")
        if version == "7":
            os.environ["RWKV_V7_ON"] = "1"
        import torch
        from rwkv.model import RWKV  # reads RWKV_* variables at import: set above, in this worker only

        self.torch = torch
        name = str(checkpoint)[: -len(".pth")]  # the package appends ".pth" itself
        self.model = RWKV(name, "cpu fp32")  # the v7 class takes no `verbose`

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        current: list[Any] = [None]

        def call() -> None:
            with self.torch.no_grad():
                _, current[0] = self.model.forward([int(self.tokens(1)[0])], current[0])
        return call

    def prefill_call(self, length: int) -> Callable[[], None]:
        tokens = self.tokens(length).tolist()

        def call() -> None:
            with self.torch.no_grad():
                self.model.forward(tokens, None)
        return call

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        state, out = None, []
        with self.torch.no_grad():
            for token in tokens:
                logits, state = self.model.forward([int(token)], state)
                out.append(logits.float().numpy())
        return np.stack(out)


class RwkvCppEngine(Engine):
    """rwkv.cpp through its C API (`bench.rwkvcpp`): `rwkv_eval` per token, its sequence mode
    (`rwkv_eval_sequence_in_chunks`) for prefill; one sequence at a time."""

    name = RWKVCPP
    max_decode_batch = 1

    def __init__(self, library: Path, model_file: Path, threads: int, vocab_size: int, seed: int) -> None:
        super().__init__(vocab_size, seed)
        from .rwkvcpp import RwkvCppModel

        self.model = RwkvCppModel(library, model_file, threads)
        self.logits = np.empty(self.model.logits_len, np.float32)

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        buffers = [self.model.fresh_state(), np.empty(self.model.state_len, np.float32)]

        def call() -> None:
            self.model.eval(int(self.tokens(1)[0]), buffers[0], buffers[1], self.logits)
            buffers.reverse()
        return call

    def prefill_call(self, length: int) -> Callable[[], None]:
        tokens, fresh = self.tokens(length), self.model.fresh_state()
        state_out = np.empty_like(fresh)
        return lambda: self.model.eval_sequence(tokens, fresh, state_out, self.logits)

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        state, nxt, out = self.model.fresh_state(), np.empty(self.model.state_len, np.float32), []
        for token in tokens:
            self.model.eval(int(token), state, nxt, self.logits)
            out.append(self.logits.copy())
            state, nxt = nxt, state
        return np.stack(out)


class LlamaCppEngine(Engine):
    """llama.cpp through its C API (`bench.llamacpp`): `llama_decode` of one token per sequence for decode (a
    batch is its parallel sequences, one context holding them all), of the whole prompt for prefill."""

    name = LLAMACPP

    def __init__(self, binding_dir: Path, library_dir: Path, model_file: Path, threads: int, vocab_size: int,
                 seed: int, prefill_tokens: int) -> None:
        super().__init__(vocab_size, seed)
        from .llamacpp import LlamaCppModel

        self.model = LlamaCppModel(binding_dir, library_dir, model_file, threads)
        self.prefill_tokens = max(prefill_tokens, 1)

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        context = self.model.context(batch, batch)

        def call() -> None:
            context.decode(self.tokens(batch))
        return call

    def prefill_call(self, length: int) -> Callable[[], None]:
        context, tokens = self.model.context(1, max(self.prefill_tokens, length)), self.tokens(length)
        return lambda: context.prefill(tokens)

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        context, out = self.model.context(1, 1), []
        for token in tokens:
            context.decode(np.array([token]))
            out.append(context.logits(0))
        return np.stack(out)


class GenaiEngine(Engine):
    """ONNX Runtime GenAI's Generator on a package's GenAI folder, greedy, one sequence: what a C, C++ or C#
    application calls per token (`generate_next_token`: the decoder graph at seq 1, then the search). Its ORT
    session takes `threads` intra-op threads; GenAI has no setting for ORT's spin-waiting, so its threads spin
    (ORT's default): compare it with the rwkv-deploy-spin rows at 2 threads and more."""

    name = GENAI
    max_decode_batch = 1

    def __init__(self, folder: Path, threads: int, vocab_size: int, seed: int) -> None:
        super().__init__(vocab_size, seed)
        import json

        import onnxruntime_genai as og

        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.og, self.model = og, og.Model(config)

    def _generator(self) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=1 << 20, do_sample=False)
        return self.og.Generator(self.model, params)

    def decode_call(self, batch: int, state: Any = None) -> Callable[[], None]:
        generator = self._generator()
        generator.append_tokens(self.tokens(1).tolist())
        return generator.generate_next_token

    def prefill_call(self, length: int) -> Callable[[], None]:
        tokens = self.tokens(length).tolist()
        return lambda: self._generator().append_tokens(tokens)

    def stream_logits(self, tokens: np.ndarray) -> np.ndarray:
        generator, out = self._generator(), []
        for token in tokens:
            generator.append_tokens([int(token)])
            out.append(np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)[:self.vocab_size])
        return np.stack(out)
