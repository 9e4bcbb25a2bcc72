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


def _state_file(path, header: object, tensors: dict[str, bytes] | None = None) -> None:
    """A state file written by hand: `header` as the JSON header, `tensors` as raw .npy members."""
    import io
    import json
    import zipfile

    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__header__.npy", buffer.getvalue())
        for name, data in (tensors or {}).items():
            zf.writestr(f"{name}.npy", data)


def _header(batch: int = 1, graph: str = "a" * 64) -> dict:
    return {"format": "rwkv-deploy-state", "format_version": 1, "graph_sha256": graph,
            "tensors": [{"name": e.name, "shape": [batch, *e.shape[1:]], "dtype": "float32"} for e in MANIFEST.state]}


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("make,message", [
    pytest.param(lambda p: p.write_bytes(b""), "not an rwkv-deploy state file", id="empty"),
    pytest.param(lambda p: (fresh(1).save(p), p.write_bytes(p.read_bytes()[:100])), "not an rwkv-deploy state file",
                 id="truncated"),
    pytest.param(lambda p: _state_file(p, ["not", "an", "object"]), "header is not an object", id="header-list"),
    pytest.param(lambda p: _state_file(p, {"format": 1}), "header lacks", id="header-incomplete"),
    pytest.param(lambda p: _state_file(p, dict(_header(), tensors=[{"name": 1}])), "tensors are not a list",
                 id="header-bad-tensors"),
    pytest.param(lambda p: _state_file(p, _header(), {"t0000": _npy(np.zeros((1, 4), np.float32))}),
                 "has no tensor t0001", id="missing-tensor"),
    pytest.param(lambda p: _state_file(p, _header(), {"t0000": _npy(np.zeros((1, 5), np.float32)),
                                                      "t0001": _npy(np.zeros((1, 2, 3), np.float32))}),
                 r"array 't0000' is float32 \[1, 5\], expected float32 \[1, 4\]", id="wrong-shape"),
    pytest.param(lambda p: _state_file(p, _header(), {"t0000": _npy(np.zeros((1, 4), np.float32)),
                                                      "t0001": _npy(np.full((1, 2, 3), np.nan, np.float32))}),
                 "state tensor 'layer0.wkv' contains NaN", id="nan"),
    pytest.param(lambda p: _state_file(p, _header(), {"t0000": _npy(np.full((1, 4), -np.inf, np.float32)),
                                                      "t0001": _npy(np.zeros((1, 2, 3), np.float32))}),
                 "state tensor 'layer0.pp' contains infinite values", id="inf"),
    pytest.param(lambda p: _state_file(p, _header(batch=0)), r"batch 0 is not in 1\.\.", id="batch-0"),
    pytest.param(lambda p: _state_file(p, _header(batch=65537)), r"batch 65537 is not in 1\.\.65536", id="batch-too-big"),
])
def test_damaged_or_crafted_state_files_are_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "s.state"
    make(path)
    with pytest.raises(StateError, match=message) as caught:
        RecurrentState.load(path, MANIFEST)
    assert len(str(caught.value).splitlines()) == 1 and str(path) in str(caught.value)


def test_a_member_declaring_a_huge_shape_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """The .npy header says [1, 100000, 100000] (40 GB); the file is a few hundred bytes: nothing is allocated."""
    from tests.helpers.hostile import npy_bytes

    _state_file(tmp_path / "s.state", _header(), {"t0000": _npy(np.zeros((1, 4), np.float32)),
                                                  "t0001": npy_bytes((1, 100000, 100000))})
    with pytest.raises(StateError, match=r"is float32 \[1, 100000, 100000\], expected float32 \[1, 2, 3\]"):
        RecurrentState.load(tmp_path / "s.state", MANIFEST)


def test_a_header_declaring_more_state_than_the_cap_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_DEPLOY_MAX_STATE_BYTES", "1000")
    _state_file(tmp_path / "s.state", _header(batch=100))  # 100 x 10 floats = 4000 bytes
    with pytest.raises(StateError, match="more than the cap"):
        RecurrentState.load(tmp_path / "s.state", MANIFEST)
