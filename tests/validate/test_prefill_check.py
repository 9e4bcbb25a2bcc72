"""`validate` also checks a package's prefill graph against the reference, chunk by chunk, through the
runtime backend's own `prefill`."""

from __future__ import annotations

import numpy as np
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import load_model
from rwkv_deploy.runtime import DeploymentPackage
from rwkv_deploy.validate import ValidateOptions, validate_package
from rwkv_deploy.validate.prefill_check import compare_prefill
from rwkv_deploy.validate.sides import ArtifactSide, ReferenceSide
from rwkv_deploy.validate.streams import TokenStream
from tests.helpers.random_checkpoints import make_checkpoint

import pytest

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


def test_prefill_graph_is_checked_and_a_wrong_one_is_caught(tmp_path):
    for seed in (1, 2):
        torch.save(make_checkpoint("6", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=seed),
                   tmp_path / f"m{seed}.pth")
    export_package(tmp_path / "m1.pth", tmp_path / "pkg", ExportOptions(tokenizer="none", prefill=True))
    result = validate_package(tmp_path / "pkg", tmp_path / "m1.pth", ValidateOptions(steps=40, batch=2, greedy_tokens=4))
    prefill_checks = [c for c in result.checks if c.scope == "prefill"]
    assert {c.metric for c in prefill_checks} == {"logits_max_abs", "state_max_rel"}
    assert result.passed and all(c.value <= 1e-4 for c in prefill_checks)

    tokens = np.random.default_rng(0).integers(0, 256, (40, 2), dtype=np.int64)
    stream = TokenStream("random", tokens, "")
    package = DeploymentPackage.open(tmp_path / "pkg")
    artifact = ArtifactSide.open("onnxruntime", package)
    other = compare_prefill(ReferenceSide(load_model(tmp_path / "m2.pth"), package.manifest), artifact, stream, chunk=16)
    same = compare_prefill(ReferenceSide(load_model(tmp_path / "m1.pth"), package.manifest), artifact, stream, chunk=16)
    assert same.chunks == other.chunks == 3
    assert same.logits_max_abs <= 1e-4 < 0.1 < other.logits_max_abs
