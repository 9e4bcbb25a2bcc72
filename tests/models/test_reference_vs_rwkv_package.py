"""Our reference models against BlinkDL's own implementation, the `rwkv` package (cpu fp32).

Random checkpoints of every version at several shapes; three sequences of 40 tokens, run by us as
one batch of 3 and by the package one sequence at a time, each from a fresh state with the state
carried across its tokens. Every step's logits and the final state must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_deploy.models import load_model
from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint
from tests.helpers.rwkv_oracle import OracleJob, run_rwkv_package_jobs

pytestmark = pytest.mark.slow  # runs the rwkv package as an oracle in child processes

TOLERANCE = 1e-4
SEQ_LEN = 40

CASES = [
    # (version, n_layer, n_embd, head_size, vocab[, state-tuned])
    ("4", 3, 96, 0, 301),
    ("4", 2, 64, 0, 97),
    ("5.0", 2, 64, 32, 97),
    ("5.1", 3, 128, 32, 301),
    ("5.2", 3, 128, 32, 301),
    ("5.2", 2, 128, 64, 97),
    ("6", 3, 128, 32, 301),
    ("6", 2, 64, 64, 97),
    ("5.2", 2, 64, 32, 97, "time_state"),
    ("6", 2, 64, 32, 97, "time_state"),
    ("7", 3, 128, 32, 301),
    ("7", 2, 128, 64, 97),
]


def case_id(case: tuple) -> str:
    version, n_layer, n_embd, head_size, vocab, *tuned = case
    return f"v{version}-L{n_layer}-C{n_embd}-N{head_size}-V{vocab}" + "".join(f"-{t}" for t in tuned)


@pytest.fixture(scope="module")
def package_runs(tmp_path_factory):
    """Build every checkpoint and run the package on all of them (one subprocess per family)."""
    root = tmp_path_factory.mktemp("oracle")
    rng = np.random.default_rng(7)
    jobs, inputs = [], {}
    for k, case in enumerate(CASES):
        version, n_layer, n_embd, head_size, vocab, *tuned = case
        kwargs = {"head_size": head_size} if head_size else {}
        kwargs["time_state"] = bool(tuned)
        sd = make_checkpoint(version, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab, seed=100 + k, **kwargs)
        path = save_checkpoint(sd, root / f"{case_id(case)}.pth")
        sequences = rng.integers(0, vocab, size=(3, SEQ_LEN)).tolist()
        jobs.append(OracleJob(path, version, sequences))
        inputs[case_id(case)] = (path, sequences)
    results = run_rwkv_package_jobs(jobs)
    return {case_id(case): (inputs[case_id(case)], runs[0]) for case, runs in zip(CASES, results)}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_logits_and_state_match_the_rwkv_package(case, package_runs, record_property):
    (path, sequences), runs = package_runs[case_id(case)]
    model = load_model(path)
    assert model.config.version == case[0]

    tokens = torch.tensor(sequences)  # [3, T]: three independent sequences in one batch
    state = model.init_state(batch=3)
    ours = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            ours.append(logits.numpy())
    ours = np.stack(ours, axis=1)  # [3, T, V]

    worst = 0.0
    for b, run in enumerate(runs):
        worst = max(worst, float(np.abs(ours[b] - run.logits).max()))
        assert len(run.state) == len(state)
        for mine, theirs, spec in zip(state, run.state, model.state_spec()):
            np.testing.assert_allclose(mine[b].numpy(), theirs, atol=TOLERANCE, rtol=1e-4, err_msg=spec.name)
    record_property("max_abs_logit_diff", worst)
    print(f"{case_id(case)}: max |logit diff| = {worst:.3e}")
    assert worst <= TOLERANCE
    assert np.std(ours) > 0.1  # the comparison means something: logits are spread, not flat
