"""Hugging Face RWKV-5.2 / RWKV-6 folders in BBuf's remote-code format (written here as his converters write
them, tests/helpers/hf_converters.py) load as the same model as the `.pth` they came from; bad folders are
refused in one line naming the file."""

from __future__ import annotations

import json

import pytest
import torch

from rwkv_deploy.errors import CheckpointError
from rwkv_deploy.models import load_checkpoint, load_model
from tests.helpers.hf_converters import write_bbuf_rwkv_folder
from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint

TOKENS = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(5))


def logits(path) -> torch.Tensor:
    model = load_model(path)
    with torch.no_grad():
        return model(TOKENS, model.init_state(len(TOKENS)))[0]


@pytest.mark.parametrize("version, weights, shards", [("5.2", "bin", 1), ("6", "safetensors", 3), ("6", "bin", 2)],
                         ids=["v5.2-bin", "v6-safetensors-sharded", "v6-bin-sharded"])
def test_bbuf_folder_matches_the_pth(version, weights, shards, tmp_path):
    # rescale_every=1 at 3 layers: a reader that rescaled the stored (un-rescaled) weights would differ
    sd = make_checkpoint(version, n_layer=3, n_embd=96, head_size=16, vocab_size=101, seed=2)
    pth = save_checkpoint(sd, tmp_path / "m.pth")
    folder = write_bbuf_rwkv_folder(sd, tmp_path / "hf", version, rescale_every=1, weights=weights, shards=shards)
    ckpt, original = load_checkpoint(folder), load_checkpoint(pth)
    assert ckpt.source_format == f"huggingface-rwkv{version[0]} (BBuf remote code)"
    assert ckpt.config == original.config
    assert all(torch.equal(ckpt.tensors[k], original.tensors[k]) for k in original.tensors)
    assert torch.equal(logits(folder), logits(pth))


def test_head_size_divisor_sets_the_group_norm_epsilon(tmp_path):
    folder = write_bbuf_rwkv_folder(make_checkpoint("6", n_layer=1, n_embd=64, head_size=32, vocab_size=101),
                                    tmp_path / "hf", "6")
    config = json.loads((folder / "config.json").read_text())
    assert load_checkpoint(folder).config.ln_x_eps == 64e-5
    (folder / "config.json").write_text(json.dumps(config | {"head_size_divisor": 4, "layer_norm_epsilon": 1e-6}))
    cfg = load_checkpoint(folder).config
    assert (cfg.ln_x_eps, cfg.ln_eps) == (pytest.approx(16e-5), 1e-6)


def test_a_bbuf_weights_file_alone_loads_too(tmp_path):
    sd = make_checkpoint("5.2", n_layer=2, n_embd=64, head_size=32, vocab_size=101)
    folder = write_bbuf_rwkv_folder(sd, tmp_path / "hf", "5.2")
    ckpt = load_checkpoint(folder / "pytorch_model.bin")
    assert (ckpt.source_format, ckpt.config.version) == ("huggingface-weights", "5.2")


# -- bad folders: one CheckpointError line naming the file -------------------------------------------------

@pytest.fixture
def v6_folder(tmp_path):
    sd = make_checkpoint("6", n_layer=2, n_embd=64, head_size=32, vocab_size=101)
    return write_bbuf_rwkv_folder(sd, tmp_path / "hf", "6", weights="safetensors")


def refused(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_config(v6_folder):
    (v6_folder / "config.json").unlink()
    assert "no config.json" in refused(v6_folder) and str(v6_folder) in refused(v6_folder)


@pytest.mark.parametrize("text, problem", [("{not json", "not valid JSON"), ("[1, 2]", "not a model config"),
                                           ('{"layer_norm_epsilon": "small"}', "expected a number"),
                                           ('{"hidden_size": 65}', "hidden_size 65, but the embedding is 64 wide"),
                                           ('{"model_type": "rwkv5"}', "model_type 'rwkv5', but the weights are"),
                                           ('{"intermediate_size": 200}', "intermediate_size 200, but")])
def test_garbled_config(v6_folder, text, problem):
    (v6_folder / "config.json").write_text(text)
    message = refused(v6_folder)
    assert problem in message and str(v6_folder / "config.json") in message


def test_missing_key(v6_folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(v6_folder / "model.safetensors")
    del tensors["rwkv.blocks.1.attention.time_faaaa"]
    save_file(tensors, v6_folder / "model.safetensors")
    message = refused(v6_folder)
    assert str(v6_folder) in message and "missing keys blocks.1.att.time_faaaa" in message


def test_unknown_spelling(v6_folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(v6_folder / "model.safetensors")
    save_file({k.replace("rwkv.", "transformer."): v for k, v in tensors.items()}, v6_folder / "model.safetensors")
    message = refused(v6_folder)
    assert str(v6_folder) in message and "not an RWKV layout this reads" in message
