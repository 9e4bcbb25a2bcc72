"""ONNX Runtime GenAI runs our GenAI folders: greedy output equals our runtime's, in one prompt and in a batch
of prompts of unequal length (padded positions leave the state alone)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.small_packages import shared
from tests.targets.genai.genai_runs import genai, ours

pytestmark = pytest.mark.slow  # exports and builds GenAI folders

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx")

PROMPT = [72, 101, 108, 108, 111, 32, 119]
N = 12


@pytest.fixture(scope="module")
def folders(shared_package, tmp_path_factory):
    from rwkv_deploy.targets.genai.folder import write_genai_folder

    made = {}

    def get(version: str, precision: str):
        if (version, precision) not in made:
            package = shared(shared_package, version, precision)
            made[version, precision] = package, write_genai_folder(
                package, tmp_path_factory.mktemp("genai") / f"v{version}-{precision}").path
        return made[version, precision]

    return get


@pytest.mark.parametrize("version", ["5.2", "6", "7"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_greedy_logits_match_our_runtime(folders, version, precision):
    package, folder = folders(version, precision)
    expected, expected_logits = ours(package, PROMPT, N)
    (tokens,), logits = genai(folder, [PROMPT], N)
    assert tokens == expected
    for theirs, mine in zip(logits, expected_logits):
        assert np.max(np.abs(theirs[0, :-1] - mine)) <= 1e-5
        assert theirs[0, -1] < -1e4  # the pad id's logit is never chosen


@pytest.mark.parametrize("version", ["7"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_greedy_logits_match_our_runtime(folders, version, precision):
    """The quantized products run in GenAI as in our runtime (same kernels, same accuracy level)."""
    package, folder = folders(version, precision)
    expected, expected_logits = ours(package, PROMPT, N)
    (tokens,), logits = genai(folder, [PROMPT], N)
    assert tokens == expected
    for theirs, mine in zip(logits, expected_logits):
        assert np.max(np.abs(theirs[0, :-1] - mine)) <= 1e-5


def test_a_batch_of_unequal_prompts_gives_each_prompts_own_tokens(folders):
    package, folder = folders("7", "fp32")
    prompts = [PROMPT, PROMPT[:3], [9]]
    batch, _ = genai(folder, prompts, N)
    assert batch == [genai(folder, [p], N)[0][0] for p in prompts]
    assert batch == [ours(package, p, N)[0] for p in prompts]
