"""The bundled RWKV-7 checkpoint exports in fp32 and fp16 and its packages match the reference."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import load_checkpoint
from rwkv_deploy.models.bundled import bundled_checkpoint
from tests.helpers.onnx_compare import run_both

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    return {p: export_package(bundled_checkpoint(), root / p, ExportOptions(precision=p)) and root / p
            for p in ("fp32", "fp16")}


def test_the_bundled_checkpoint_is_a_small_rwkv7_byte_model():
    ckpt = load_checkpoint(bundled_checkpoint())
    assert ckpt.config.version == "7" and ckpt.config.vocab_size == 256
    assert ckpt.stored_dtype == "bf16"
    assert bundled_checkpoint().stat().st_size < 5_000_000


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_package_matches_the_reference(packages, batch):
    worst = max(float(np.abs(r - a).max()) for r, a in run_both(bundled_checkpoint(), packages["fp32"], batch))
    print(f"bundled fp32 batch {batch}: max |logit diff| {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("batch", [1, 3])
def test_fp16_package_stays_close(packages, batch):
    rows = list(run_both(bundled_checkpoint(), packages["fp16"], batch))
    worst = max(float(np.abs(r - a).max()) for r, a in rows)
    agree = np.mean([np.mean(r.argmax(-1) == a.argmax(-1)) for r, a in rows])
    print(f"bundled fp16 batch {batch}: max |logit diff| {worst:.2e}, top-1 agreement {agree:.3f}")
    assert worst <= 0.1 and agree >= 0.95
