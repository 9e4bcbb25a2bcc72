"""RecurrentState from a manifest alone: fresh values, copies, batching, files, and what it refuses.

No model is needed: a two-entry manifest written here is all the state code reads.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_deploy.package.manifest import GraphInfo, Manifest, ModelInfo, StateEntry, TokenizerInfo
from rwkv_deploy.runtime.state import RecurrentState, StateError

TUNED = np.arange(6, dtype=np.float32).reshape(2, 3)  # a state-tuned model's per-sequence value


def make_manifest(graph_sha: str = "a" * 64) -> Manifest:
    return Manifest(
        model=ModelInfo(version="7", n_layer=1, n_embd=4, n_head=2, head_size=3, vocab_size=10, ffn_size=16),
        graphs={"step": GraphInfo(path="m.onnx", precision="fp32", opset=18)},
        state=[
            StateEntry("layer0.pp", "state_in.layer0.pp", "state_out.layer0.pp", ["batch", 4], "float32", -1e30),
            StateEntry("layer0.wkv", "state_in.layer0.wkv", "state_out.layer0.wkv", ["batch", 2, 3], "float32",
                       0.0, init_file="initial_state.npz"),
        ],
        tokenizer=TokenizerInfo(kind="none"),
        files={"m.onnx": graph_sha},
    )


MANIFEST = make_manifest()


def fresh(batch: int) -> RecurrentState:
    return RecurrentState.fresh(MANIFEST, batch, {"layer0.wkv": TUNED})


def numbered(batch: int) -> RecurrentState:
    """A state whose every row is different, to see which rows went where."""
    state = fresh(batch)
    return state.replace([np.arange(v.size, dtype=np.float32).reshape(v.shape) for v in state.values])


def test_fresh_state_fills_init_and_repeats_the_tuned_value_over_batch():
    state = fresh(3)
    assert state.names == ("layer0.pp", "layer0.wkv")
    assert state.batch == 3
    np.testing.assert_array_equal(state.values[0], np.full((3, 4), -1e30, np.float32))
    np.testing.assert_array_equal(state.values[1], np.stack([TUNED] * 3))
    assert state.graph_sha256 == "a" * 64


def test_fresh_state_needs_the_tuned_value_it_names():
    with pytest.raises(StateError, match="layer0.wkv.*initial_state.npz"):
        RecurrentState.fresh(MANIFEST, 1)


def test_clone_is_independent_of_the_original():
    original = fresh(2)
    copy = original.clone()
    copy.values[1][0, 0, 0] = 123.0
    assert original.values[1][0, 0, 0] == 0.0
    original.values[0][1, 2] = 7.0
    assert copy.values[0][1, 2] == -1e30


def test_rows_and_concat_move_whole_sequences():
    state = numbered(3)
    picked = state.rows([2, 0])
    np.testing.assert_array_equal(picked.values[1], state.values[1][[2, 0]])
    joined = RecurrentState.concat([state.rows([0]), state.rows([1]), state.rows([2])])
    for a, b in zip(joined.values, state.values):
        np.testing.assert_array_equal(a, b)


def test_concat_refuses_states_of_another_model():
    other = RecurrentState.fresh(make_manifest("b" * 64), 1, {"layer0.wkv": TUNED})
    with pytest.raises(StateError, match="different models"):
        RecurrentState.concat([fresh(1), other])


def test_save_and_load_round_trip(tmp_path):
    state = numbered(2)
    state.save(tmp_path / "chat.state")
    loaded = RecurrentState.load(tmp_path / "chat.state", MANIFEST)
    assert loaded.names == state.names and loaded.graph_sha256 == state.graph_sha256
    for a, b in zip(loaded.values, state.values):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_loading_into_another_model_is_refused(tmp_path):
    fresh(1).save(tmp_path / "s.npz")
    with pytest.raises(StateError, match="saved from another model"):
        RecurrentState.load(tmp_path / "s.npz", make_manifest("b" * 64))


def test_loading_a_file_that_is_not_a_state_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    (tmp_path / "text.state").write_text("hello")
    for name in ("other.npz", "text.state"):
        with pytest.raises(StateError, match="not an rwkv-deploy state file"):
            RecurrentState.load(tmp_path / name, MANIFEST)


@pytest.mark.parametrize("change,message", [
    pytest.param(lambda v: v[:1], r"state has 1 tensors, the model expects 2", id="count"),
    pytest.param(lambda v: (v[0], v[1][:, :1]), r"layer0.wkv has shape \[2, 1, 3\], expected \[2, 2, 3\]",
                 id="shape"),
    pytest.param(lambda v: (v[0], v[1].astype(np.float16)), r"layer0.wkv has dtype float16, expected float32",
                 id="dtype"),
])
def test_check_names_the_tensor_and_both_shapes(change, message):
    state = fresh(2)
    bad = state.replace(change(state.values))
    with pytest.raises(StateError, match=message):
        bad.check(MANIFEST.state, batch=2)
    with pytest.raises(ValueError):  # plain-Python callers can catch it as a ValueError
        bad.check(MANIFEST.state, batch=2)
