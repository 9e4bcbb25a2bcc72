"""ONNX Runtime GenAI on folders made from the committed golden RWKV-7 packages (fast: nothing is exported).

Each of the decoder's three paths is taken here: one token (the step graph), a prompt in a batch of equal
lengths (the prefill graph, once), prompts of unequal length (the masked loop); every one gives our runtime's
logits, the 8-bit package included: its products must run as they run in our runtime, at the same accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.golden import golden_package
from tests.targets.genai.genai_runs import genai, ours

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx")

PROMPT = [72, 101, 108, 108, 111, 32, 119]
OTHER = [87, 111, 114, 108, 100, 33, 10]  # as long as PROMPT
N = 6
MAX_ABS = 1e-5


@pytest.fixture(scope="module", params=["v7-fp32", "v7-int8"])
def golden_folder(request, tmp_path_factory) -> tuple[Path, Path]:
    from rwkv_deploy.targets.genai.folder import write_genai_folder

    package = golden_package(request.param)
    return package, write_genai_folder(package, tmp_path_factory.mktemp("genai") / request.param).path


def _assert_same(theirs: list[np.ndarray], row: int, mine: list[np.ndarray]) -> None:
    for got, want in zip(theirs, mine, strict=True):
        assert np.max(np.abs(got[row, :-1] - want)) <= MAX_ABS


def test_a_prompt_goes_through_the_prefill_graph_at_our_runtimes_logits(golden_folder):
    package, folder = golden_folder
    expected, expected_logits = ours(package, PROMPT, N)
    (tokens,), logits = genai(folder, [PROMPT], N)
    assert tokens == expected
    _assert_same(logits, 0, expected_logits)


def test_a_batch_of_equal_prompts_is_prefilled_together(golden_folder):
    package, folder = golden_folder
    (first, second), logits = genai(folder, [PROMPT, OTHER], N)
    for row, (prompt, tokens) in enumerate([(PROMPT, first), (OTHER, second)]):
        expected, expected_logits = ours(package, prompt, N)
        assert tokens == expected
        _assert_same(logits, row, expected_logits)


def test_padded_prompts_of_unequal_length_keep_each_prompts_logits(golden_folder):
    package, folder = golden_folder
    prompts = [PROMPT, PROMPT[:3], [9]]
    got, logits = genai(folder, prompts, N)
    for row, prompt in enumerate(prompts):
        expected, expected_logits = ours(package, prompt, N)
        assert got[row] == expected
        _assert_same(logits, row, expected_logits)


def test_the_prompt_path_is_the_packages_prefill_graph_at_the_top_level():
    """Nested two subgraphs deep, ONNX Runtime left 8-bit weights unpacked (another accuracy, ~100x slower):
    the prefill graph must sit in a top-level If, not inside another subgraph."""
    import onnx

    from rwkv_deploy.targets.genai.folder import build_decoder
    from rwkv_deploy.package.manifest_file import read_manifest

    package = golden_package("v7-int8")
    decoder = build_decoder(package, read_manifest(package))
    prefill = onnx.load(str(package / read_manifest(package).graphs["prefill"].path), load_external_data=False)
    scans = sum(node.op_type == "Scan" for node in prefill.graph.node)
    assert scans > 0

    def branches(node: onnx.NodeProto) -> list[onnx.GraphProto]:
        return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]

    top_level_branch_scans = [sum(n.op_type == "Scan" for n in g.node)
                              for node in decoder.graph.node for g in branches(node)]
    assert scans in top_level_branch_scans
