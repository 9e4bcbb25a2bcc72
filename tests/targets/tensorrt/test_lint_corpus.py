"""check-trt calibrated against the real parser and builder of TensorRT for RTX (installed by the test extra).

Every graph of the corpus (`lint_corpus.py`, one or more per lint rule) is linted and then parsed and built
with RTX, exactly as build-engine does (strongly typed network, parse_from_file, one profile that covers
every dynamic input dim, the case's compute capabilities). A graph must get an error-level finding exactly
when the real parse+build fails: no false positive, no false negative.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_deploy.targets.tensorrt.builder import EngineBuildError, make_logger, parse_network
from rwkv_deploy.targets.tensorrt.lint import RULES, lint_model
from rwkv_deploy.targets.tensorrt.targets import rtx_capabilities
from tests.targets.tensorrt.lint_corpus import CASES, NOT_IN_CORPUS, write_case

import onnx

trt = pytest.importorskip("tensorrt_rtx", reason="the test extra installs tensorrt-rtx-cu13; it is missing here")


def real_build(graph: Path, targets: tuple[str, ...]) -> str | None:
    """None if RTX parses and builds the graph, else its error."""
    logger = make_logger(trt)
    try:
        builder, network, _parser = parse_network(trt, logger, graph)
    except EngineBuildError as exc:
        return str(exc)
    config = builder.create_builder_config()
    if targets:
        capabilities = rtx_capabilities(trt)
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            assert config.set_compute_capability(capabilities[target], index)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low = [1 if d == -1 else d for d in tensor.shape]
        high = [4 if d == -1 else d for d in tensor.shape]
        profile.set_shape(tensor.name, low, low, high)
    config.add_optimization_profile(profile)
    if builder.build_serialized_network(network, config) is None:
        return f"build failed: {logger.last_error()}"
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lint_verdict_agrees_with_the_real_parser_and_builder(case, tmp_path):
    graph = write_case(case, tmp_path / case.name)
    findings = lint_model(onnx.load(str(graph), load_external_data=False), graph, targets=case.targets)
    found = {(f.level, f.check) for f in findings}
    assert case.expect <= found, f"the lint did not raise {sorted(case.expect - found)}; it found {sorted(found)}"
    failure = real_build(graph, case.targets)
    assert (failure is not None) == case.fails, failure or "RTX built it"
    lint_errors = [f"{f.check}: {f.message}" for f in findings if f.level == "error"]
    if case.fails:
        assert lint_errors, f"false negative: RTX failed ({failure}) and check-trt found no error"
    else:
        assert not lint_errors, f"false positive: RTX built it, check-trt says {lint_errors}"


def test_every_rule_is_in_the_corpus_or_says_why_not():
    covered = {check for case in CASES for _, check in case.expect}
    assert set(RULES) - covered == set(NOT_IN_CORPUS)


def test_every_rule_has_a_level_and_a_basis():
    for rule in RULES.values():
        assert rule.level in ("error", "policy", "warning", "info")
        assert (rule.level == "error") == (rule.basis in ("parser", "builder")), rule
