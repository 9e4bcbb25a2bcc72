"""ONNX Runtime steps equal the PyTorch reference, states survive a restart, bad inputs are named.

One small random checkpoint per RWKV generation is exported once for the module (v6 state-tuned,
so its fresh state comes from the package's initial_state.npz). Packages carry no tokenizer here,
which also lets the no-torch test run a whole package.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import RWKVModel, load_model
from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
from rwkv_deploy.runtime.package import DeploymentPackage, InputError
from rwkv_deploy.runtime.state import RecurrentState, StateError
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

VERSIONS = ["4", "5.2", "6", "7"]
VOCAB = 256
STEPS = 64
TOLERANCE = 1e-4  # fp32 graph vs fp32 PyTorch


@dataclass(frozen=True)
class Exported:
    package: DeploymentPackage
    reference: RWKVModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("backend")
    result = {}
    for seed, version in enumerate(VERSIONS):
        ckpt = root / f"v{version}.pth"
        torch.save(make_checkpoint(version, n_layer=2, n_embd=64, head_size=16, vocab_size=VOCAB, seed=seed,
                                   time_state=version == "6"), ckpt)
        export_package(ckpt, root / f"v{version}", ExportOptions(tokenizer="none"))
        result[version] = Exported(DeploymentPackage.open(root / f"v{version}"), load_model(ckpt).eval())
    return result


def random_tokens(steps: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(steps, batch), dtype=np.int64)


def run_reference(model: RWKVModel, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [steps, batch, vocab] and final state of the PyTorch model, one step per row of `tokens`.

    One torch thread: these tiny steps are dominated by thread hand-offs on a busy machine."""
    state, logits = model.init_state(tokens.shape[1]), []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for row in tokens:
                out, state = model.step(torch.from_numpy(row), state)
                logits.append(out.numpy())
    finally:
        torch.set_num_threads(threads)
    return np.stack(logits), [s.numpy() for s in state]


def run_backend(backend: OnnxStepBackend, tokens: np.ndarray,
                state: RecurrentState | None = None) -> tuple[np.ndarray, RecurrentState]:
    state = state or backend.fresh_state(tokens.shape[1])
    logits = []
    for row in tokens:
        out, state = backend.step(row, state)
        logits.append(out)
    return np.stack(logits), state


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("version", VERSIONS)
def test_step_matches_the_pytorch_reference(exported, version, batch):
    tokens = random_tokens(STEPS, batch, seed=batch)
    expected_logits, expected_state = run_reference(exported[version].reference, tokens)
    logits, state = run_backend(OnnxStepBackend(exported[version].package), tokens)
    assert logits.dtype == np.float32 and logits.shape == (STEPS, batch, VOCAB)
    assert np.abs(logits - expected_logits).max() <= TOLERANCE
    for name, got, want in zip(state.names, state.numpy().values, expected_state):
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
def test_fresh_state_from_the_manifest_equals_the_reference_init_state(exported, version):
    fresh = exported[version].package.fresh_state(2)
    reference = exported[version].reference.init_state(2)
    assert len(fresh.values) == len(reference)
    for name, got, want in zip(fresh.names, fresh.values, reference):
        np.testing.assert_array_equal(got, want.numpy(), err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_restarted_backend_continues_from_a_saved_state(exported, version, tmp_path):
    tokens = random_tokens(40, 2, seed=5)
    package = exported[version].package
    uninterrupted, _ = run_backend(OnnxStepBackend(package), tokens)

    _, half_way = run_backend(OnnxStepBackend(package), tokens[:20])
    half_way.save(tmp_path / "conversation.state")
    del half_way  # nothing survives but the file and the package directory

    reopened = DeploymentPackage.open(package.directory)
    restored = RecurrentState.load(tmp_path / "conversation.state", reopened.manifest)
    continued, _ = run_backend(OnnxStepBackend(reopened), tokens[20:], restored)
    np.testing.assert_array_equal(continued, uninterrupted[20:])


def test_spin_waiting_threads_are_off_unless_asked_for_and_change_no_number(exported):
    package = exported["7"].package
    quiet, spinning = OnnxStepBackend(package, threads=2), OnnxStepBackend(package, threads=2, spin_wait=True)
    for backend, expected in ((quiet, "0"), (spinning, "1")):
        options = backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        assert options.intra_op_num_threads == 2
    tokens = random_tokens(10, 2, seed=7)
    np.testing.assert_array_equal(run_backend(spinning, tokens)[0], run_backend(quiet, tokens)[0])


def test_step_leaves_the_given_state_untouched(exported):
    backend = OnnxStepBackend(exported["7"].package)
    _, state = run_backend(backend, random_tokens(5, 2, seed=6))
    before = state.clone()
    first, _ = backend.step(np.array([3, 4]), state)
    second, _ = backend.step(np.array([3, 4]), state)
    np.testing.assert_array_equal(first, second)
    for a, b in zip(state.numpy().values, before.values):
        np.testing.assert_array_equal(a, b)


def test_a_token_outside_the_vocabulary_is_named_with_its_position(exported):
    backend = OnnxStepBackend(exported["7"].package)
    with pytest.raises(InputError, match=r"token id 256 at position 1 is outside the vocabulary \[0, 256\)"):
        backend.step(np.array([5, 256, 7]), backend.fresh_state(3))
    with pytest.raises(ValueError, match=r"token id -1 at position 0"):
        backend.step(np.array([-1]), backend.fresh_state(1))


def test_a_state_of_the_wrong_shape_or_dtype_is_named(exported):
    backend = OnnxStepBackend(exported["7"].package)
    with pytest.raises(StateError, match=r"layer0.att_shift has shape \[2, 64\], expected \[3, 64\]"):
        backend.step(np.array([1, 2, 3]), backend.fresh_state(2))
    state = backend.fresh_state(1)
    as_float64 = state.replace([v.astype(np.float64) for v in state.values])
    with pytest.raises(StateError, match=r"layer0.att_shift has dtype float64, expected float32"):
        backend.step(np.array([1]), as_float64)
    with pytest.raises(StateError, match=r"state has 5 tensors, the model expects 6"):
        backend.step(np.array([1]), state.replace(state.values[:5]))


def test_a_state_of_another_model_is_refused(exported):
    v6_state = exported["6"].package.fresh_state(1)
    with pytest.raises(StateError, match="another model"):
        OnnxStepBackend(exported["7"].package).step(np.array([1]), v6_state)


def test_the_runtime_never_imports_torch(exported):
    script = textwrap.dedent(f"""
        import sys
        from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend
        import rwkv_deploy.cli.generate_cmd
        package = DeploymentPackage.open({str(exported["7"].package.directory)!r})
        result = Generator(OnnxStepBackend(package)).generate([1, 2, 3], max_tokens=4, temperature=0)
        assert len(result.token_ids) == 4
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
