"""Hugging Face transformers RWKV-4 directories load through our loader and match transformers' logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "RwkvForCausalLM"):
    pytest.skip("the installed transformers no longer ships RWKV", allow_module_level=True)

from rwkv_deploy.models import load_checkpoint, load_model  # noqa: E402


def tiny_hf_model(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.RwkvConfig(vocab_size=97, hidden_size=64, num_hidden_layers=3, attention_hidden_size=64,
                                     intermediate_size=256, context_length=128)
    model = transformers.RwkvForCausalLM(config)
    with torch.no_grad():  # spread the random init so that logits differ meaningfully between tokens
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
            elif "time_decay" in name:
                p.copy_(torch.linspace(-4, 2, p.numel()))
            elif "time_first" in name:
                p.uniform_(-1, 1)
            elif "time_mix" in name:
                p.uniform_(0.1, 0.9)
    return model


@pytest.mark.parametrize("shard", [False, True], ids=["single-file", "sharded"])
def test_hf_directory_matches_transformers(shard, tmp_path):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path, **({"max_shard_size": "100KB"} if shard else {}))  # before any eval-mode forward
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()

    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.version == "4"
    assert ckpt.source_format == "huggingface-rwkv4 (transformers)"
    assert (ckpt.config.n_layer, ckpt.config.n_embd, ckpt.config.vocab_size) == (3, 64, 97)

    tokens = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    hf.eval()
    with torch.no_grad():
        expected = hf(tokens).logits
        ours = load_model(tmp_path)
        got, _ = ours(tokens, ours.init_state(2))
    assert expected.std() > 0.1
    diff = (got - expected).abs().max().item()
    print(f"HF RWKV-4 max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
