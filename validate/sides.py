"""The two things validation runs on the same tokens: the PyTorch reference, and the package as deployed.

Both speak the graph's I/O names and hand back numpy outputs by name; each keeps its state in its own
form (the reference: numpy arrays; the artifact: the backend's `RecurrentState`, which for TensorRT lives
on the GPU) and is always fed its own previous state, never the other side's.

The artifact side is a runtime step backend from `rwkv_deploy.runtime.backends.make_backend`: the very
object `rwkv-deploy generate` runs, with its session options, state handling and prefill graph, so what is
validated is what is deployed.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.models.reference.base import RWKVModel
from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.runtime import DeploymentPackage, StepBackend, backends
from rwkv_deploy.runtime.generation import can_prefill
from rwkv_deploy.runtime.state import RecurrentState, host

from .errors import ValidationError

Outputs = dict[str, np.ndarray]  # graph output name -> value on the host
REFERENCE_NAME = "pytorch-fp32"


class Side(Protocol):
    """One implementation of the model, stepped one token per sequence."""

    name: str
    manifest: Manifest

    def init_state(self, batch: int) -> Any: ...

    def advance(self, tokens: np.ndarray, state: Any) -> tuple[Outputs, Any]:
        """One step: all outputs by name, and the state to feed to this side's next step."""
        ...


class ReferenceSide:
    """The PyTorch fp32 reference, its outputs labelled with the graph's output names."""

    name = REFERENCE_NAME

    def __init__(self, model: RWKVModel, manifest: Manifest) -> None:
        self.model, self.manifest = model, manifest
        self.state_outputs = [e.output for e in manifest.state]

    def init_state(self, batch: int) -> list[np.ndarray]:
        return [t.numpy() for t in self.model.init_state(batch)]

    @torch.no_grad()
    def advance(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[Outputs, list[np.ndarray]]:
        logits, new_state = self.model.step(torch.from_numpy(tokens), [torch.from_numpy(s) for s in state])
        return self._outputs(logits, new_state)

    @torch.no_grad()
    def prefill(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[Outputs, list[np.ndarray]]:
        """Tokens [batch, T] in one forward pass: the last position's logits and the state after it."""
        logits, new_state = self.model(torch.from_numpy(tokens), [torch.from_numpy(s) for s in state],
                                       last_only=True)
        return self._outputs(logits, new_state)

    def _outputs(self, logits: torch.Tensor, state: list[torch.Tensor]) -> tuple[Outputs, list[np.ndarray]]:
        values = [t.numpy() for t in state]
        return {self.manifest.logits_output: logits.numpy(), **dict(zip(self.state_outputs, values))}, values


class ArtifactSide:
    """The package run by a runtime step backend (ONNX Runtime, TensorRT), exactly as `generate` runs it.

    The state it hands on is the backend's own, so it stays where that backend keeps it between steps;
    only the compared outputs are copied to the host."""

    def __init__(self, backend: StepBackend, name: str, manifest: Manifest) -> None:
        self.backend, self.name, self.manifest = backend, name, manifest
        self.state_outputs = [e.output for e in manifest.state]

    @classmethod
    def open(cls, backend: str, package: DeploymentPackage, threads: int | None = None) -> "ArtifactSide":
        """`backend` ("onnxruntime", "tensorrt") on `package`, built by the runtime's own factory; `threads`
        sets ONNX Runtime's intra-op threads (a GPU backend has none to set)."""
        return cls(backends.make_backend(backend, package, **backends.cpu_options(backend, threads)), backend,
                   package.manifest)

    def describe(self) -> str:
        """What runs the artifact, in words (for the report)."""
        session = getattr(self.backend, "session", None)  # an ONNX Runtime backend's session
        engine = ""
        if session is not None:
            import onnxruntime

            engine = f"ONNX Runtime {onnxruntime.__version__} {session.get_providers()[0]} in "
        return (f"{engine}the runtime's {self.name} backend ({type(self.backend).__name__} from "
                f"rwkv_deploy.runtime.backends.make_backend), as `rwkv-deploy generate --backend {self.name}` runs it")

    @property
    def has_prefill(self) -> bool:
        return can_prefill(self.backend)

    def init_state(self, batch: int) -> RecurrentState:
        return self.backend.fresh_state(batch)

    def advance(self, tokens: np.ndarray, state: RecurrentState) -> tuple[Outputs, RecurrentState]:
        return self._outputs(*self._run(self.backend.step, tokens, state))

    def prefill(self, tokens: np.ndarray, state: RecurrentState) -> tuple[Outputs, RecurrentState]:
        """Tokens [batch, T] through the backend's prefill graph (only when `has_prefill`)."""
        backend = self.backend
        if not can_prefill(backend):
            raise TypeError(f"{type(backend).__name__} has no prefill graph")
        return self._outputs(*self._run(backend.prefill, tokens, state))

    def _run(self, call: Any, tokens: np.ndarray, state: RecurrentState) -> tuple[Any, RecurrentState]:
        try:
            return call(tokens, state)
        except RwkvDeployError:
            raise
        except Exception as exc:  # ONNX Runtime and TensorRT raise their own exception types
            raise ValidationError(f"the {self.name} backend failed to run the graph: {first_line(exc)}") from None

    def _outputs(self, logits: Any, state: RecurrentState) -> tuple[Outputs, RecurrentState]:
        return {self.manifest.logits_output: np.asarray(logits),
                **{name: host(v) for name, v in zip(self.state_outputs, state.values)}}, state


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
