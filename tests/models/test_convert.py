"""`rwkv-deploy convert`: .pth -> hf -> .pth gives back BlinkDL's state dict; the HF folders load in the outside
tools (rwkv7-hf for RWKV-7, transformers for RWKV-4) as the same model; unfaithful conversions and unsafe
outputs are refused in one line, leaving nothing behind."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.models import load_checkpoint, load_model
from rwkv_deploy.models.convert import ConvertError, convert_checkpoint
from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint

TOKENS = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
UNUSED_IN_HF = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")  # rwkv7-hf's layer 0 has no v_lora


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS, model.init_state(len(TOKENS)))[0]


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_pth_to_hf_to_pth_gives_back_the_state_dict(version, tmp_path):
    extra = {} if version == "4" else {"head_size": 16}
    sd = {k: v.to(torch.bfloat16) for k, v in
          make_checkpoint(version, n_layer=2, n_embd=80, vocab_size=97, seed=4, **extra).items()}
    pth = save_checkpoint(sd, tmp_path / "m.pth")
    hf = convert_checkpoint(pth, "hf", tmp_path / "hf")
    assert hf.format == load_checkpoint(tmp_path / "hf").source_format
    back = convert_checkpoint(tmp_path / "hf", "pth", tmp_path / "back.pth")
    assert back.format == "pytorch"
    got = torch.load(tmp_path / "back.pth", weights_only=True)
    expected = {k: v for k, v in sd.items() if k not in UNUSED_IN_HF}
    assert got.keys() == expected.keys()
    for key, value in expected.items():  # names, BlinkDL shapes and the stored dtype survive
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 2


def test_rwkv7_hf_loads_our_folder_as_the_same_model(tmp_path):
    rwkv7_hf = pytest.importorskip("rwkv7_hf.modeling_rwkv7")
    pth = save_checkpoint(make_checkpoint("7", n_layer=2, n_embd=80, head_size=16, vocab_size=97), tmp_path / "m.pth")
    convert_checkpoint(pth, "hf", tmp_path / "hf")
    theirs = rwkv7_hf.RWKV7ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    for layer in theirs.model.layers:  # head size 16: BlinkDL's GroupNorm epsilon, not head_dim * norm_eps
        layer.attn.g_norm.eps = 64e-5
    with torch.no_grad():
        expected = theirs(TOKENS).logits
    diff = (logits(load_model(pth)) - expected).abs().max().item()
    print(f"rwkv7-hf on our converted folder vs our .pth: max |logit diff| = {diff:.2e}")
    assert diff <= 2e-5


def test_transformers_loads_our_rwkv4_folder_as_the_same_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "RwkvForCausalLM"):
        pytest.skip("the installed transformers no longer ships RWKV")
    pth = save_checkpoint(make_checkpoint("4", n_layer=3, n_embd=80, vocab_size=97), tmp_path / "m.pth")
    convert_checkpoint(pth, "hf", tmp_path / "hf")
    theirs = transformers.RwkvForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        expected = theirs(TOKENS).logits
    assert (logits(load_model(pth)) - expected).abs().max().item() <= 1e-4


def test_the_world_vocabulary_goes_with_a_65536_token_model(tmp_path):
    pth = save_checkpoint(make_checkpoint("6", n_layer=1, n_embd=32, head_size=16, vocab_size=65536,
                                          lora={"mix": 8, "decay": 8}), tmp_path / "m.pth")
    convert_checkpoint(pth, "hf", tmp_path / "hf")
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert names == ["LICENSE-rwkv-vocab.txt", "config.json", "model.safetensors", "rwkv_vocab_v20230424.txt"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["architectures"], config["intermediate_size"]) == (["Rwkv6ForCausalLM"], None)


def test_refusals_leave_nothing_behind(tmp_path):
    pth = save_checkpoint(make_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=97), tmp_path / "m.pth")
    (tmp_path / "taken.pth").write_bytes(b"mine")
    cases = [
        ((pth, "pth", tmp_path / "taken.pth"), "exists (use --force"),
        ((pth, "hf", tmp_path), "lies inside the input"),
        ((pth, "onnx", tmp_path / "x"), "expected one of hf, pth"),
    ]
    tuned = save_checkpoint(make_checkpoint("6", n_layer=1, n_embd=32, head_size=16, vocab_size=97, time_state=True,
                                            lora={"mix": 8, "decay": 8}), tmp_path / "tuned.pth")
    cases.append(((tuned, "hf", tmp_path / "t"), "tuned state"))
    old = save_checkpoint(make_checkpoint("5.1", n_layer=2, n_embd=32, head_size=16, vocab_size=97), tmp_path / "o.pth")
    cases.append(((old, "hf", tmp_path / "o"), "RWKV-5.1 has no Hugging Face format"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, problem in cases:
        with pytest.raises(ConvertError, match=re.escape(problem)):
            convert_checkpoint(*args)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "taken.pth").read_bytes() == b"mine"


def test_the_command(tmp_path):
    pth = save_checkpoint(make_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=97), tmp_path / "m.pth")
    runner = CliRunner()
    ok = runner.invoke(app, ["convert", str(pth), "--to", "hf", str(tmp_path / "hf")])
    assert ok.exit_code == 0, ok.output
    assert "huggingface-rwkv7 (fla)" in ok.stdout and "read back: the same model" in ok.stdout
    again = runner.invoke(app, ["convert", str(pth), "--to", "hf", str(tmp_path / "hf")])
    assert again.exit_code == 2 and "exists (use --force to replace it)" in again.stderr
    forced = runner.invoke(app, ["convert", str(pth), "--to", "hf", str(tmp_path / "hf"), "--force"])
    assert forced.exit_code == 0, forced.output


def test_a_wrong_write_is_caught_by_the_read_back_and_not_published(tmp_path, monkeypatch):
    import rwkv_deploy.models.convert as convert

    pth = save_checkpoint(make_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=97), tmp_path / "m.pth")
    mapped = convert._fla_tensors

    def swapped_lora(state):  # a map bug: w1 written untransposed (square when C equals the rank)
        out = mapped(state)
        out["model.layers.0.attn.w_lora.lora.0.weight"] = state["blocks.0.att.w1"].contiguous()
        return out

    monkeypatch.setattr(convert, "_fla_tensors", swapped_lora)
    with pytest.raises(ConvertError, match=re.escape("read back with a different blocks.0.att.w1")):
        convert_checkpoint(pth, "hf", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]
