"""Correct exports of every RWKV version pass validation: fp32 within 1e-4 of the reference, fp16 within
the fp16 limits, over 64 steps with each side carrying its own state."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.validate import Fp32Thresholds, ValidateOptions, ValidationResult, validate_package
from tests.helpers.random_checkpoints import make_checkpoint

VERSIONS = ("4", "5.2", "6", "7")
STEPS = 64

Exported = Callable[[str, str], tuple[Path, Path]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """(version, precision) -> (package dir, checkpoint); each export is made once, on first use."""
    root = tmp_path_factory.mktemp("fidelity")
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(version: str, precision: str) -> tuple[Path, Path]:
        if (version, precision) not in cache:
            checkpoint = root / f"rwkv{version}.pth"
            if not checkpoint.exists():
                torch.save(make_checkpoint(version, n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=7),
                           checkpoint)
            package = root / f"rwkv{version}-{precision}"
            export_package(checkpoint, package, ExportOptions(precision=precision))
            cache[version, precision] = (package, checkpoint)
        return cache[version, precision]

    return get


def validate(package: Path, checkpoint: Path, batch: int) -> ValidationResult:
    return validate_package(package, checkpoint, ValidateOptions(steps=STEPS, batch=batch, torch_threads=1))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_export_matches_the_reference_to_1e4(exported, version, batch):
    package, checkpoint = exported(version, "fp32")
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
def test_fp16_export_passes_the_fp16_thresholds(exported, version):
    package, checkpoint = exported(version, "fp16")
    result = validate(package, checkpoint, batch=3)

    assert result.thresholds.precision == "fp16"
    assert result.passed, [c.describe() for c in result.failures]
    # ... and it really is fp16: further from the reference than fp32 rounding could explain
    assert result.worst("logits_max_abs") > Fp32Thresholds().logits_max_abs
