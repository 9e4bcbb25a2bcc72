"""The server as a front end to Triton (`serve PKG --triton HOST:PORT --model NAME`): a step backend whose
recurrent state lives in Triton's sequence batcher, one correlation id per request.

The scheduler runs unchanged on it: its "state" is a one-column `RecurrentState` of correlation ids, so rows
join and leave the batch as with ONNX Runtime, and each step sends one gRPC request per row (a sequence's
first with START) from a thread pool; Triton batches them. A request that leaves the batch ends its Triton
sequence with a last request flagged END (its answer is dropped). Prompts go token by token (a `package
--triton` repository has the step graph only), and the prefix cache, sessions and `state` are not available:
the state never reaches this process. The package supplies the tokenizer and must be the one the repository
was written from (its vocabulary is checked against the model's logits).
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.runtime.package import DeploymentPackage
from rwkv_deploy.runtime.state import RecurrentState

SEQUENCE_ID = "triton_sequence_id"
MAX_SEQUENCE_ID = (1 << 62) - 1  # random ids: several front ends on one Triton server never collide


class TritonFrontEndError(RefusedError):
    """The Triton front end cannot reach or use the model it was pointed at."""


def _client_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise TritonFrontEndError("serve --triton needs Triton's gRPC client: pip install "
                                  "'rwkv-deploy[triton]' (tritonclient[grpc])") from None
    return grpcclient


def _max_sequences(config: dict) -> int | None:
    """Live sequences the model's sequence batcher takes at once (candidates x instances), None if unknown."""
    config = config.get("config", config)
    oldest = config.get("sequence_batching", {}).get("oldest", {})
    candidates = int(oldest.get("max_candidate_sequences", 0) or 0)
    instances = sum(int(g.get("count", 1) or 1) for g in config.get("instance_group", [])) or 1
    return candidates * instances if candidates else None


class TritonSequenceBackend:
    """`StepBackend` over a Triton model written by `rwkv-deploy package --triton`."""

    has_prefill = False
    state_is_remote = True

    def __init__(self, url: str, model: str, package: DeploymentPackage, max_batch: int,
                 timeout_s: float = 60.0) -> None:
        from tritonclient.utils import InferenceServerException

        grpc = _client_module()
        self.url, self.model, self.package, self.timeout_s = url, model, package, timeout_s
        self.client = grpc.InferenceServerClient(url)
        try:
            if not self.client.is_model_ready(model):
                raise TritonFrontEndError(f"{url}: model {model!r} is not ready on this Triton server")
            meta = self.client.get_model_metadata(model, as_json=True)
            config = self.client.get_model_config(model, as_json=True)
        except InferenceServerException as exc:
            raise TritonFrontEndError(f"{url}: {exc.message() or exc}") from None
        inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
        if len(inputs) != 1 or not outputs or len(outputs[0].get("shape", [])) != 2:
            raise TritonFrontEndError(f"{url}: model {model!r} is not a `package --triton` step model")
        self._token_input, self._token_type = inputs[0]["name"], inputs[0]["datatype"]
        self._logits = outputs[0]["name"]
        if int(outputs[0]["shape"][1]) != package.vocab_size:
            raise TritonFrontEndError(f"{url}: model {model!r} has {outputs[0]['shape'][1]} logits, the package "
                                      f"{package.directory} {package.vocab_size}: give the package it was made from")
        limit = _max_sequences(config)
        if limit is not None and max_batch > limit:
            raise TritonFrontEndError(f"--max-batch {max_batch} is more than the {limit} sequences model {model!r} "
                                      f"runs at once (max_candidate_sequences x instances): lower --max-batch")
        self._grpc = grpc
        self._pool = ThreadPoolExecutor(max_workers=max(2, max_batch), thread_name_prefix="triton-step")
        self._started: set[int] = set()
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self.package.vocab_size

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        ids = np.array([secrets.randbelow(MAX_SEQUENCE_ID) + 1 for _ in range(batch)], np.int64)
        return RecurrentState((SEQUENCE_ID,), (ids,), self.package.graph_sha256)

    def _infer(self, token: int, sequence_id: int, end: bool = False) -> np.ndarray:
        with self._lock:
            start = sequence_id not in self._started
            self._started.add(sequence_id)
        grpc = self._grpc
        data = grpc.InferInput(self._token_input, [1, 1], self._token_type)
        data.set_data_from_numpy(np.array([[token]], dtype=np.int64 if self._token_type == "INT64" else np.int32))
        result = self.client.infer(self.model, [data], outputs=[grpc.InferRequestedOutput(self._logits)],
                                   sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                                   client_timeout=self.timeout_s)
        return result.as_numpy(self._logits)[0]

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        tokens = self.package.check_tokens(tokens)
        ids = state.values[0]
        rows = list(self._pool.map(lambda pair: self._infer(int(pair[0]), int(pair[1])), zip(tokens, ids)))
        return np.stack(rows).astype(np.float32, copy=False), state

    def release(self, state: RecurrentState) -> None:
        """End the Triton sequences of `state` (in the background): one last request flagged END."""
        for sequence_id in (int(i) for i in state.values[0]):
            with self._lock:
                if sequence_id not in self._started:
                    continue
            self._pool.submit(self._end, sequence_id)

    def _end(self, sequence_id: int) -> None:
        try:
            self._infer(0, sequence_id, end=True)
        except Exception:  # the sequence may already be gone (idle timeout); nothing else to do
            pass
        with self._lock:
            self._started.discard(sequence_id)
