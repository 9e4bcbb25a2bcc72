"""Correct exports of every RWKV version pass validation: fp32 within 1e-4 of the reference, fp16 within
the fp16 limits, over 64 steps with each side carrying its own state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv_deploy.package.manifest import MANIFEST_NAME
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.validate import Fp32Thresholds, ValidateOptions, ValidationResult, validate_package
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

VERSIONS = ("4", "5.2", "6", "7")
STEPS = 64


def export_once(tmp_path_factory: pytest.TempPathFactory, version: str, precision: str) -> tuple[Path, Path]:
    """(package, checkpoint) of a small random RWKV checkpoint (vocab 256, so it carries the byte tokenizer).

    Exports take seconds each, so each is made once per test session, in pytest's base temp directory,
    and shared by every module that asks for it; tests that break a package break a copy.
    """
    root = tmp_path_factory.getbasetemp() / "validate-packages"
    checkpoint, package = root / f"rwkv{version}.pth", root / f"rwkv{version}-{precision}"
    if not (package / MANIFEST_NAME).exists():
        if not checkpoint.exists():
            root.mkdir(parents=True, exist_ok=True)
            torch.save(make_checkpoint(version, n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=7),
                       checkpoint)
        export_package(checkpoint, package, ExportOptions(precision=precision, force=True))
    return package, checkpoint


def validate(package: Path, checkpoint: Path, batch: int) -> ValidationResult:
    return validate_package(package, checkpoint, ValidateOptions(steps=STEPS, batch=batch, threads=1))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_export_matches_the_reference_to_1e4(tmp_path_factory, version, batch):
    package, checkpoint = export_once(tmp_path_factory, version, "fp32")
    result = validate(package, checkpoint, batch)

    assert result.passed, [c.describe() for c in result.failures]
    # vocab 256 packages carry the byte tokenizer, so real text is compared as well as random ids
    assert [s.name for s in result.streams] == ["random", "text"]
    state_names = {e.name for e in result.manifest.state}
    for stream in result.streams:
        assert (stream.steps, stream.batch) == (STEPS, batch)
        assert len(stream.per_step["logits_max_abs"]) == STEPS
        assert stream.metrics["logits_max_abs"] <= 1e-4
        assert stream.metrics["top1_agreement"] == 1.0
        assert stream.metrics["steps_out_of_tolerance"] == 0
        assert set(stream.state) == state_names  # every state tensor compared, each on its own
    assert result.greedy.matched == [result.greedy.tokens] * batch


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_export_passes_the_fp16_thresholds(tmp_path_factory, version):
    package, checkpoint = export_once(tmp_path_factory, version, "fp16")
    result = validate(package, checkpoint, batch=3)

    assert result.thresholds.precision == "fp16"
    assert result.passed, [c.describe() for c in result.failures]
    # ... and it really is fp16: further from the reference than fp32 rounding could explain
    assert result.worst("logits_max_abs") > Fp32Thresholds().logits_max_abs
