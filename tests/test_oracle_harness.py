"""Checks that the oracle helpers work, and that they can fail.

Random checkpoints must load in BlinkDL's `rwkv` package and give finite logits with a spread.
The harness must feed the state correctly: one token at a time must match the package's own
multi-token forward. Seeds, time_state and carried state must change the output. A wrong version
request must raise. All package runs are batched in one module fixture (two subprocesses: v4-v6
and v7), because interpreter start-up dominates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.random_checkpoints import VERSIONS, make_checkpoint, save_checkpoint
from tests.helpers.rwkv_oracle import OracleJob, PackageRun, run_rwkv_package, run_rwkv_package_jobs

pytestmark = pytest.mark.slow  # runs the rwkv package as an oracle in child processes

SHAPE = {"n_layer": 2, "n_embd": 64, "head_size": 32, "vocab_size": 97}
# Sequence 0 has 10 tokens, so chunks of 4 leave a short last chunk. Sequence 1 repeats a token,
# so only the carried state can make its first two outputs differ.
SEQUENCES = [[1, 5, 9, 2, 7, 3, 8, 4, 6, 96], [42, 42, 7]]
CHUNK = 4
TOL = 1e-5


@dataclass(frozen=True)
class VersionRun:
    version: str
    step: list[PackageRun]
    chunked: list[PackageRun]


@dataclass(frozen=True)
class HarnessRuns:
    by_version: dict[str, VersionRun]
    v4_seed1: list[PackageRun]
    v6_time_state: list[PackageRun]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> HarnessRuns:
    """Every version (seed 0) step-by-step and chunked, plus v4 seed 1 and v6 with time_state."""
    root = tmp_path_factory.mktemp("ckpt")
    jobs = [
        OracleJob(save_checkpoint(make_checkpoint(v, **SHAPE), root / f"v{v}.pth"), v, SEQUENCES, (None, CHUNK))
        for v in VERSIONS
    ]
    jobs.append(OracleJob(save_checkpoint(make_checkpoint("4", **SHAPE, seed=1), root / "v4s1.pth"), "4", SEQUENCES))
    tuned = make_checkpoint("6", **SHAPE, time_state=True)
    jobs.append(OracleJob(save_checkpoint(tuned, root / "v6ts.pth"), "6", SEQUENCES))
    results = run_rwkv_package_jobs(jobs)
    by_version = {v: VersionRun(v, *results[k]) for k, v in enumerate(VERSIONS)}
    return HarnessRuns(by_version, results[-2][0], results[-1][0])


@pytest.fixture(params=VERSIONS)
def version_run(request: pytest.FixtureRequest, runs: HarnessRuns) -> VersionRun:
    return runs.by_version[request.param]


def test_package_loads_and_gives_spread_finite_logits(version_run: VersionRun) -> None:
    for seq, run in zip(SEQUENCES, version_run.step):
        assert run.logits.shape == (len(seq), SHAPE["vocab_size"])
        assert run.logits.dtype == np.float32
        assert np.isfinite(run.logits).all()
        assert run.logits.std(axis=1).min() > 0.1


def test_step_logits_match_chunked_forward(version_run: VersionRun) -> None:
    for seq, step, chunked in zip(SEQUENCES, version_run.step, version_run.chunked):
        chunk_ends = [min(end, len(seq)) - 1 for end in range(CHUNK, len(seq) + CHUNK, CHUNK)]
        assert chunked.logits.shape == (len(chunk_ends), SHAPE["vocab_size"])
        np.testing.assert_allclose(chunked.logits, step.logits[chunk_ends], rtol=0, atol=TOL)


def test_step_state_matches_chunked_state(version_run: VersionRun) -> None:
    for step, chunked in zip(version_run.step, version_run.chunked):
        assert [s.shape for s in step.state] == [s.shape for s in chunked.state]
        for a, b in zip(step.state, chunked.state):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=TOL)


def test_state_layout_is_the_documented_one(version_run: VersionRun) -> None:
    c, n = SHAPE["n_embd"], SHAPE["head_size"]
    per_layer = [(c,)] * 5 if version_run.version == "4" else [(c,), (c // n, n, n), (c,)]
    assert [s.shape for s in version_run.step[0].state] == per_layer * SHAPE["n_layer"]


def test_state_is_carried_between_tokens(version_run: VersionRun) -> None:
    """Same token twice (v4 included): only the carried state can make the outputs differ."""
    repeated = version_run.step[1].logits  # tokens 42, 42, 7
    assert np.abs(repeated[1] - repeated[0]).max() > 1e-3


def test_different_seeds_give_different_logits(runs: HarnessRuns) -> None:
    seed0, seed1 = runs.by_version["4"].step[0].logits, runs.v4_seed1[0].logits
    assert np.abs(seed0 - seed1).max() > 1e-2


def test_time_state_is_used_by_package(runs: HarnessRuns) -> None:
    plain, tuned = make_checkpoint("6", **SHAPE), make_checkpoint("6", **SHAPE, time_state=True)
    assert {k for k in tuned if k not in plain} == {f"blocks.{i}.att.time_state" for i in range(SHAPE["n_layer"])}
    assert all(torch.equal(plain[k], tuned[k]) for k in plain)
    first_plain, first_tuned = runs.by_version["6"].step[0].logits[0], runs.v6_time_state[0].logits[0]
    assert np.isfinite(first_tuned).all()
    assert np.abs(first_plain - first_tuned).max() > 1e-3


def test_wrong_version_request_raises_with_stderr(tmp_path: Path) -> None:
    path = save_checkpoint(make_checkpoint("5.2", **SHAPE), tmp_path / "v52.pth")
    with pytest.raises(RuntimeError, match=r"(?s)stderr.*package detected v5\.2 but v5\.1 was requested"):
        run_rwkv_package(path, "5.1", [[1]])


@pytest.mark.parametrize("version", VERSIONS)
def test_checkpoint_is_deterministic_and_layers_differ(version: str) -> None:
    a, b = make_checkpoint(version, **SHAPE, seed=3), make_checkpoint(version, **SHAPE, seed=3)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float32 for t in a.values())
    for key in a:
        twin = key.replace("blocks.0.", "blocks.1.", 1)
        if key.startswith("blocks.0.") and twin in a:
            assert not torch.equal(a[key], a[twin]), key
