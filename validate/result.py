"""What a validation is asked (`ValidateOptions`) and what it returns (`ValidationResult`); how it fails is errors.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.package.names import STEP_GRAPH
from rwkv_deploy.runtime.backends import DEFAULT_BACKEND

from .thresholds import Check, Thresholds

if TYPE_CHECKING:
    from .greedy import GreedyResult
    from .stream_compare import StreamResult


@dataclass(frozen=True)
class ValidateOptions:
    steps: int = 256
    batch: int = 4
    seed: int = 0
    greedy_tokens: int = 32
    prompt_length: int = 16
    check_hashes: bool = True
    threads: int | None = None  # the PyTorch reference's and ONNX Runtime's threads; None: each library's own
    backend: str = DEFAULT_BACKEND  # the runtime backend that runs the artifact (runtime.backends.BACKENDS)


@dataclass
class ValidationResult:
    package_dir: str
    checkpoint: str
    manifest: Manifest
    options: ValidateOptions
    thresholds: Thresholds
    streams: list["StreamResult"]
    greedy: "GreedyResult"
    checks: list[Check]
    timings: dict[str, float]
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    artifact_runtime: str = ""  # what ran the artifact, in words

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
        return (f"{'PASS' if self.passed else 'FAIL'}: RWKV-{m.model.version} {m.graphs[STEP_GRAPH].precision} artifact vs "
                f"PyTorch fp32, {self.options.steps} steps x {self.options.batch} sequences x {len(self.streams)} "
                f"stream(s): max |dlogit| {self.worst('logits_max_abs'):.3g}, "
                f"KL mean {self.worst('kl_mean'):.3g} (max {self.worst('kl_max'):.3g}), "
                f"top-1 {100 * self.worst('top1_agreement', lowest=True):.2f}%, "
                f"greedy {min(self.greedy.matched)}/{self.greedy.tokens} identical")
