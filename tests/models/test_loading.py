"""Reading checkpoints in every supported file format and recognising every version."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rwkv_deploy.models import detect_version, load_checkpoint, load_model
from tests.helpers.random_checkpoints import make_checkpoint

SHAPES = {"n_layer": 2, "n_embd": 64, "vocab_size": 97}


def checkpoint(version: str, **kw) -> dict[str, torch.Tensor]:
    extra = {} if version == "4" else {"head_size": 32}
    return make_checkpoint(version, **(SHAPES | extra | kw))


@pytest.mark.parametrize("version", ["4", "5.0", "5.1", "5.2", "6", "7"])
def test_version_and_sizes_come_from_the_weights(version, tmp_path):
    path = tmp_path / "m.pth"
    torch.save(checkpoint(version), path)
    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    assert cfg.version == version
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (2, 64, 97)
    if version == "4":
        assert cfg.n_head is None
    else:
        assert (cfg.n_head, cfg.head_size) == (2, 32)
    assert ckpt.stored_dtype == "fp32"


def test_lora_ranks_are_read_from_shapes(tmp_path):
    cfg6 = load_checkpoint(_save(checkpoint("6", lora={"mix": 16, "decay": 48}), tmp_path / "6.pth")).config
    assert cfg6.lora == {"mix": 16, "decay": 48}
    cfg7 = load_checkpoint(_save(checkpoint("7", lora={"w": 8, "a": 16, "v": 24, "g": 40}), tmp_path / "7.pth")).config
    assert cfg7.lora == {"w": 8, "a": 16, "v": 24, "g": 40}


def _save(sd, path):
    torch.save(sd, path)
    return path


def test_safetensors_and_pth_give_the_same_model(tmp_path):
    sd = checkpoint("7")
    torch.save(sd, tmp_path / "m.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    a, b = load_model(tmp_path / "m.pth"), load_model(tmp_path / "m.safetensors")
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(a(tokens, a.init_state(1))[0], b(tokens, b.init_state(1))[0], atol=0, rtol=0)
    assert load_checkpoint(tmp_path / "m.safetensors").source_format == "safetensors"


def test_bf16_checkpoints_are_read_and_reported(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in checkpoint("6").items()}
    ckpt = load_checkpoint(_save(sd, tmp_path / "bf16.pth"))
    assert ckpt.stored_dtype == "bf16"
    assert all(t.dtype == torch.float32 for t in ckpt.tensors.values())


@pytest.mark.parametrize("wrap", ["state_dict", "module_prefix", "compile_prefix"])
def test_common_training_wrappers_are_unwrapped(wrap, tmp_path):
    sd = checkpoint("5.2")
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 3},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "compile_prefix": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[wrap]
    assert load_checkpoint(_save(obj, tmp_path / "w.pth")).config.version == "5.2"


def test_released_v7_layer0_value_lora_is_ignored_and_optional(tmp_path):
    sd = checkpoint("7")
    assert "blocks.0.att.v1" in sd  # released files carry it
    without = {k: v for k, v in sd.items() if not k.startswith(("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"))}
    a, b = load_model(_save(sd, tmp_path / "a.pth")), load_model(_save(without, tmp_path / "b.pth"))
    tokens = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(a(tokens, a.init_state(1))[0], b(tokens, b.init_state(1))[0], atol=0, rtol=0)


def test_v5_subversions_are_told_apart():
    assert detect_version(checkpoint("5.0")) == "5.0"
    assert detect_version(checkpoint("5.1")) == "5.1"
    assert detect_version(checkpoint("5.2")) == "5.2"


def test_state_tuned_checkpoint_starts_from_its_tuned_state(tmp_path):
    model = load_model(_save(checkpoint("6", time_state=True), tmp_path / "t.pth"))
    assert model.config.has_time_state
    state = model.init_state(2)
    tuned = model.blocks[1].att.time_state.transpose(1, 2)
    torch.testing.assert_close(state[4][0], tuned)
    torch.testing.assert_close(state[4][1], tuned)
    assert model.state_spec()[4].init_from_checkpoint


def test_ln_x_epsilon_can_be_overridden(tmp_path):
    path = _save(checkpoint("5.2"), tmp_path / "m.pth")
    assert load_checkpoint(path).config.ln_x_eps == 64e-5
    assert load_checkpoint(path, ln_x_eps=1e-5).config.ln_x_eps == 1e-5
