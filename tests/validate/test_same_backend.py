"""Validation runs the artifact through the very backend object `generate` runs: whatever
`rwkv_deploy.runtime.backends.make_backend` returns is what both commands step and prefill, and what
validation compares, graph by graph. If either command ever builds its own session again, these fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.runtime import backends
from rwkv_deploy.validate import ValidateOptions, validate_package
from tests.helpers.small_packages import small_checkpoint_path

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

STEPS, BATCH, GREEDY = 16, 2, 4
SHIFT = 1e-2  # added to every logit of one graph: 10x the fp32 logits limit, invisible to KL and top-1


class RecordingBackend:
    """A runtime backend that logs each call ("step", "prefill") and can shift one graph's logits."""

    def __init__(self, inner, calls: list[str], shift: str | None, prefill: bool, by: float) -> None:
        self.inner, self.calls, self.shift, self._prefill, self.by = inner, calls, shift, prefill, by

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def has_prefill(self) -> bool:
        return self._prefill and self.inner.has_prefill

    def fresh_state(self, batch: int = 1):
        return self.inner.fresh_state(batch)

    def step(self, tokens, state):
        return self._call("step", self.inner.step, tokens, state)

    def prefill(self, tokens, state):
        return self._call("prefill", self.inner.prefill, tokens, state)

    def _call(self, graph: str, run, tokens, state):
        self.calls.append(graph)
        logits, new_state = run(tokens, state)
        return (logits + np.float32(self.by) if graph == self.shift else logits), new_state


def record_backends(monkeypatch, shift: str | None = None, prefill: bool = True, by: float = SHIFT) -> list[str]:
    """Route `make_backend` through RecordingBackend (adding `by` to the logits of graph `shift`); the
    returned list fills with the calls made."""
    calls: list[str] = []
    make = backends.make_backend

    def recording(name, package, **options):
        calls.append(f"make_backend:{name}")
        return RecordingBackend(make(name, package, **options), calls, shift, prefill, by)

    monkeypatch.setattr(backends, "make_backend", recording)
    return calls


@pytest.fixture(scope="module")
def package(shared_package) -> tuple[Path, Path]:
    """A v7 package with the byte tokenizer and a prefill graph, and its checkpoint (shared, read only)."""
    directory = shared_package("7", tokenizer="bytes", prefill=True)
    return directory, small_checkpoint_path(directory.parent, "7")


def validate(package: tuple[Path, Path]):
    return validate_package(*package, ValidateOptions(steps=STEPS, batch=BATCH, greedy_tokens=GREEDY, threads=1))


def test_generate_and_validate_step_and_prefill_the_backend_make_backend_returns(package, monkeypatch):
    calls = record_backends(monkeypatch)
    generated = CliRunner().invoke(app, ["generate", str(package[0]), "-p", "def main():", "-n", "3", "--greedy"])
    assert generated.exit_code == 0, generated.output
    assert calls[0] == "make_backend:onnxruntime" and {"prefill", "step"} <= set(calls)

    calls.clear()
    result = validate(package)
    assert result.passed, [c.describe() for c in result.failures]
    assert calls.count("make_backend:onnxruntime") == 1
    # every step of both streams, then the greedy prompt and decode: all on that one backend
    assert calls.count("step") == 2 * STEPS + min(16, STEPS) + GREEDY - 1
    assert calls.count("prefill") == 1  # STEPS tokens in one chunk of 64
    assert "RecordingBackend" in result.artifact_runtime  # the report names the object that ran


@pytest.mark.parametrize("graph,by", [("step", SHIFT), ("prefill", SHIFT), ("prefill", float("nan"))])
def test_validation_judges_what_that_backend_returns_for_each_graph(package, monkeypatch, graph, by):
    record_backends(monkeypatch, shift=graph, by=by)
    result = validate(package)

    failed = {(c.scope, c.metric) for c in result.failures}
    if graph == "step":
        assert {("random", "logits_max_abs"), ("text", "logits_max_abs")} <= failed
        assert not any(scope == "prefill" for scope, _ in failed)
    else:  # a NaN too: the prefill errors are accumulated NaN-aware
        assert failed == {("prefill", "logits_max_abs")}


def test_a_backend_without_prefill_is_reported_as_not_comparing_the_prefill_graph(package, monkeypatch):
    calls = record_backends(monkeypatch, prefill=False)
    result = validate(package)

    assert result.passed and "prefill" not in calls
    assert not [c for c in result.checks if c.scope == "prefill"]
    assert any("prefill graph was not compared" in note for note in result.notes)


def test_the_thread_count_reaches_onnx_runtime_as_well_as_pytorch(package, monkeypatch):
    asked = []
    make = backends.make_backend
    monkeypatch.setattr(backends, "make_backend", lambda name, pkg, **options: asked.append(options) or
                        make(name, pkg, **options))
    result = validate(package)  # threads=1
    assert result.passed and asked == [{"threads": 1}]
