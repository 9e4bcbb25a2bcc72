"""The runtime on the committed golden packages: each verifies, and its logits on the committed token stream
match the PyTorch fp32 reference's (recorded when the package was written), step by step and through the
prefill graph. Fast: nothing is exported."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.fidelity import kl_divergence, top1_matches
from rwkv_deploy.runtime import DeploymentPackage, stream_logits
from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
from tests.helpers.golden import NAMES, golden_expected, golden_package

# fp32 is the reference's arithmetic in another order; int8 is judged like `validate` judges it, by KL and top-1
FP32_MAX_ABS = 1e-5
INT8_KL_MEAN = 5e-4
INT8_TOP1 = 0.95


def _assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if name.endswith("fp32"):
        np.testing.assert_allclose(got, want, rtol=0, atol=FP32_MAX_ABS)
    else:
        assert kl_divergence(want, got).mean() <= INT8_KL_MEAN
        assert top1_matches(want, got).mean() >= INT8_TOP1


@pytest.mark.parametrize("name", NAMES)
def test_stepping_the_golden_package_gives_the_references_logits(name: str) -> None:
    tokens, want = golden_expected(name)
    backend = OnnxStepBackend(DeploymentPackage.open(golden_package(name)), threads=1)
    _assert_close(name, stream_logits(backend, tokens), want)


@pytest.mark.parametrize("name", NAMES)
def test_prefilling_the_golden_package_ends_at_the_references_last_logits(name: str) -> None:
    tokens, want = golden_expected(name)
    backend = OnnxStepBackend(DeploymentPackage.open(golden_package(name)), threads=1)
    logits, _ = backend.prefill(tokens[None, :].astype(np.int64), backend.fresh_state(1))
    _assert_close(name, np.asarray(logits, np.float32).reshape(1, -1), want[-1:])
