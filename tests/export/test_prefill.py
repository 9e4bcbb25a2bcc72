"""The prefill graph (`export --prefill`): T tokens in one call must equal T calls of the step graph.

Each version is exported once with its prefill graph; the prefill graph is then run at several T and batch
sizes from a non-fresh state and compared with the package's own step graph run T times (fp32 limit 1e-4,
issue 5), logits of the last position and every state tensor. The runtime's prompt path must give the same
generation with and without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.package.verify import verify_package
from rwkv_deploy.models import load_model
from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend
from tests.helpers.small_packages import shared, small_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

VERSIONS = ["4", "5.0", "5.1", "5.2", "6", "7"]
VOCAB = 256
LIMIT = 1e-4


@pytest.fixture(scope="module")
def packages(shared_package) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, package) per version: the session's shared exports (bytes tokenizer, with prefill), which
    the TensorRT tests build engines from too."""
    out = {}
    for version in VERSIONS:
        package = shared(shared_package, version)
        out[version] = (package.parent / f"v{version}-seed0.pth", package)
    return out


def sessions(package: Path) -> tuple[dict, ort.InferenceSession, ort.InferenceSession]:
    manifest = json.loads((package / "manifest.json").read_text())
    open_graph = lambda kind: ort.InferenceSession(str(package / manifest["graphs"][kind]["path"]),  # noqa: E731
                                                   providers=["CPUExecutionProvider"])
    return manifest, open_graph("step"), open_graph("prefill")


def random_state(manifest: dict, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A state somewhere mid-sequence (not the fresh one), so every state input matters."""
    state = {}
    for e in manifest["state"]:
        shape = [batch, *e["shape"][1:]]
        value = rng.standard_normal(shape).astype(np.float32) * 0.5
        if e["init"] < -1e20:  # v4's max-exponent tracker: keep it a plausible log-magnitude
            value = value + 3.0
        elif e["name"].endswith(("att_bb",)):
            value = np.abs(value) + 0.5
        state[e["input"]] = value
    return state


def run_steps(manifest, step, tokens, state):
    outputs = [o.name for o in step.get_outputs()]
    for column in tokens.T:
        result = dict(zip(outputs, step.run(None, {"token": np.ascontiguousarray(column), **state})))
        state = {e["input"]: result[e["output"]] for e in manifest["state"]}
    return result["logits"], state


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch,length", [(1, 1), (1, 17), (3, 40)])
def test_prefill_equals_t_steps_of_the_step_graph(packages, version, batch, length):
    _, package = packages[version]
    manifest, step, prefill = sessions(package)
    rng = np.random.default_rng(length)
    tokens = rng.integers(0, VOCAB, (batch, length), dtype=np.int64)
    state = random_state(manifest, batch, rng)
    want_logits, want_state = run_steps(manifest, step, tokens, state)
    names = [o.name for o in prefill.get_outputs()]
    got = dict(zip(names, prefill.run(None, {"tokens": tokens, **state})))
    assert got["logits"].shape == (batch, VOCAB)
    assert np.abs(got["logits"] - want_logits).max() <= LIMIT
    for e in manifest["state"]:
        scale = max(1.0, float(np.abs(want_state[e["input"]]).max()))
        assert np.abs(got[e["output"]] - want_state[e["input"]]).max() <= LIMIT * scale, e["name"]


def test_the_recurrence_is_one_scan_and_the_head_runs_once(packages):
    _, package = packages["7"]
    manifest = json.loads((package / "manifest.json").read_text())
    graph = onnx.load(str(package / manifest["graphs"]["prefill"]["path"]), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Scan") == 2  # one per layer: T is dynamic, nothing is unrolled
    token_dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in token_dims][1] != 3  # T is symbolic, not the tracing example
    head = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.output[0] in {o.name for o in graph.output}]
    assert head == [] or all("logits" in n.output[0] for n in head)


def test_weights_are_stored_once_for_both_graphs(packages, tmp_path):
    checkpoint, package = packages["7"]
    step_only = tmp_path / "step-only"
    export_package(checkpoint, step_only, ExportOptions(tokenizer="bytes", external_data=True))
    manifest = json.loads((package / "manifest.json").read_text())
    data = {g["external_data"] for g in manifest["graphs"].values()}
    assert len(data) == 1
    shared = (package / data.pop()).stat().st_size
    alone = (step_only / json.loads((step_only / "manifest.json").read_text())["graphs"]["step"]["external_data"]).stat().st_size
    assert shared <= alone * 1.05  # alignment padding only; a second copy would double it
    assert verify_package(package) == []


def test_all_positions_logits_match_the_reference_forward(tmp_path):
    checkpoint = small_checkpoint(tmp_path / "v6.pth", "6", seed=3)
    export_package(checkpoint, tmp_path / "pkg", ExportOptions(tokenizer="none", prefill=True, prefill_logits="all"))
    manifest, _, prefill = sessions(tmp_path / "pkg")
    assert manifest["graphs"]["prefill"]["logits"] == "all"
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 9), dtype=np.int64)
    state = {e["input"]: np.full([2, *e["shape"][1:]], e["init"], np.float32) for e in manifest["state"]}
    logits = prefill.run(["logits"], {"tokens": tokens, **state})[0]
    model = load_model(checkpoint)
    with torch.no_grad():
        want, _ = model(torch.from_numpy(tokens), model.init_state(2))
    assert logits.shape == (2, 9, VOCAB)
    assert np.abs(logits - want.numpy()).max() <= LIMIT


def test_fp16_prefill_stays_within_fp16_limits_of_its_step_graph(shared_package):
    manifest, step, prefill = sessions(shared(shared_package, "7", "fp16"))
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 24), dtype=np.int64)
    state = {e["input"]: np.full([2, *e["shape"][1:]], e["init"], np.float32) for e in manifest["state"]}
    want, _ = run_steps(manifest, step, tokens, state)
    got = prefill.run(["logits"], {"tokens": tokens, **state})[0]
    assert np.abs(got - want).max() <= 0.05
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_generation_is_the_same_with_and_without_the_prefill_graph(packages, monkeypatch):
    _, package = packages["5.2"]
    opened = DeploymentPackage.open(package)
    backend = OnnxStepBackend(opened)
    assert backend.has_prefill
    prompts = ["def parse(self, text):", "x", "import os\nimport sys\n"]  # uneven: rows leave the batch
    calls = []
    original = OnnxStepBackend.prefill
    monkeypatch.setattr(OnnxStepBackend, "prefill", lambda self, t, s: calls.append(t.shape) or original(self, t, s))
    with_prefill = Generator(backend, opened.tokenizer).generate_batch(prompts, 12, temperature=0)
    assert calls, "the prompt did not go through the prefill graph"
    monkeypatch.setattr(OnnxStepBackend, "has_prefill", property(lambda self: False))
    without = Generator(OnnxStepBackend(opened), opened.tokenizer).generate_batch(prompts, 12, temperature=0)
    assert [r.token_ids for r in with_prefill] == [r.token_ids for r in without]


def test_prefill_refuses_bad_tokens_and_packages_without_the_graph(packages, shared_package):
    _, package = packages["7"]
    backend = OnnxStepBackend(DeploymentPackage.open(package))
    state = backend.fresh_state(1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        backend.prefill(np.array([[1, 2, VOCAB]]), state)
    with pytest.raises(ValueError, match=r"\[batch, T\]"):
        backend.prefill(np.array([1, 2]), state)
    plain = OnnxStepBackend(DeploymentPackage.open(shared(shared_package, "7", prefill=False)))
    assert not plain.has_prefill
    with pytest.raises(Exception, match="--prefill"):
        plain.prefill(np.array([[1, 2]]), plain.fresh_state(1))


def test_external_data_with_a_prefill_graph_keeps_every_weight_reachable(packages, tmp_path):
    """With --external-data the tracer stores even small constants of the prefill graph in a file of its own;
    sharing the weights removes that file, so the small ones must come back inside the graph (they once
    pointed at the removed file: verify failed and ONNX Runtime could not load the prefill graph)."""
    checkpoint, _ = packages["7"]
    out = tmp_path / "pkg"
    export_package(checkpoint, out, ExportOptions(tokenizer="bytes", external_data=True, prefill=True))
    assert verify_package(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        ort.InferenceSession(str(out / graph["path"]))  # loads: every external location exists
    assert sorted(p.name for p in out.glob("*.data")) == [manifest["graphs"]["step"]["external_data"]]
