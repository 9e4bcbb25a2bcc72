"""Our reference models reproduce the logits that rwkv.cpp's own test expects from its tiny models.

Protocol (../shared/reference/rwkvcpp/README.md §4): prompt bytes [34, 105, 110], serial and sequence
mode, signed sum of differences within 1.05 x 0.001; we also bound the max abs difference. The v5 files
follow rwkv.cpp's ln_x epsilon 1e-5 (README §5), so they are loaded with that setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_deploy.models import load_model

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "rwkvcpp"
if not REFERENCE.is_dir():
    pytest.skip(f"rwkv.cpp reference data not found at {REFERENCE} (outside the project environment)",
                allow_module_level=True)

PROMPT = [34, 105, 110]
MODELS = {  # tag -> (version we detect, ln_x eps matching rwkv.cpp)
    "4v0-660K": ("4", None),
    "5v1-730K": ("5.0", 1e-5),
    "5v2-730K": ("5.2", 1e-5),
    "6v0-1m": ("6", None),
    "7v0-834K": ("7", None),
}


@pytest.mark.parametrize("tag", list(MODELS))
@pytest.mark.parametrize("mode", ["serial", "sequence"])
def test_expected_logits(tag, mode):
    version, eps = MODELS[tag]
    model = load_model(REFERENCE / f"tiny-rwkv-{tag}-FP32.bin", **({"ln_x_eps": eps} if eps else {}))
    assert model.config.version == version
    expected = np.fromfile(REFERENCE / f"expected-logits-{tag}.bin", dtype="<f4")
    with torch.no_grad():
        state = model.init_state(1)
        if mode == "serial":
            for token in PROMPT:
                logits, state = model.step(torch.tensor([token]), state)
            logits = logits[0]
        else:
            logits = model(torch.tensor([PROMPT]), state)[0][0, -1]
    diff = logits.numpy().astype(np.float32) - expected
    diff_sum = float(np.sum(diff, dtype=np.float32))
    print(f"{tag} {mode}: sum {diff_sum:+.2e}, max |diff| {np.abs(diff).max():.2e}")
    assert abs(diff_sum) <= 1.05 * 0.001
    assert np.abs(diff).max() <= 1e-5
    assert int(np.argmax(logits.numpy())) == int(np.argmax(expected))


def test_default_blinkdl_epsilon_differs_on_v5():
    """Without the rwkv.cpp epsilon the v5 logits differ clearly: the setting is what makes them match."""
    model = load_model(REFERENCE / "tiny-rwkv-5v2-730K-FP32.bin")
    expected = np.fromfile(REFERENCE / "expected-logits-5v2-730K.bin", dtype="<f4")
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT]), model.init_state(1))[0][0, -1].numpy()
    assert np.abs(logits - expected).max() > 0.1
