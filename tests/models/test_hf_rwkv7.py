"""Hugging Face RWKV-7 folders (fla-hub / rwkv7-hf and the older spelling) load as the same model as the `.pth`
they were converted from, and match PyPI `rwkv7-hf`'s own model (the outside oracle, pure PyTorch on CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

pytest.importorskip("rwkv7_hf")

from rwkv_deploy.errors import CheckpointError  # noqa: E402
from rwkv_deploy.models import load_checkpoint, load_model  # noqa: E402
from tests.helpers.hf_converters import (read_folder_tensors, respell_rwkv7_attention, restack_x_x,  # noqa: E402
                                         write_rwkv7_hf_folder, write_weights)
from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint  # noqa: E402

VOCAB = 97
SEQUENCES = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(7))


def converted(root: Path, head_size: int, n_embd: int, seed: int = 0, **convert) -> tuple[Path, Path]:
    pth = save_checkpoint(make_checkpoint("7", n_layer=2, n_embd=n_embd, head_size=head_size, vocab_size=VOCAB,
                                          seed=seed), root / f"m{head_size}.pth")
    return pth, write_rwkv7_hf_folder(pth, root / f"hf{head_size}", **convert)


@pytest.fixture(scope="module")
def hs16(tmp_path_factory) -> tuple[Path, Path]:
    """A `.pth` at n_embd 80 (5 heads of 16) and rwkv7-hf's conversion of it."""
    return converted(tmp_path_factory.mktemp("hf7"), 16, 80)


def our_logits(path: Path, **overrides) -> torch.Tensor:
    model = load_model(path, **overrides)
    with torch.no_grad():
        return model(SEQUENCES, model.init_state(len(SEQUENCES)))[0]


def rwkv7_hf_logits(folder: Path, group_norm_eps: float | None = None) -> torch.Tensor:
    from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

    model = RWKV7ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if group_norm_eps is not None:  # rwkv7-hf keeps head_dim * norm_eps in each layer's attn.g_norm.eps
        for layer in model.model.layers:
            layer.attn.g_norm.eps = group_norm_eps
    with torch.no_grad():
        return model(SEQUENCES).logits


def test_head_size_64_matches_rwkv7_hf(tmp_path):
    pth, folder = converted(tmp_path, 64, 128, seed=3)
    ckpt = load_checkpoint(folder)
    assert ckpt.source_format == "huggingface-rwkv7 (fla)"
    assert (ckpt.config.n_head, ckpt.config.head_size, ckpt.config.ln_x_eps) == (2, 64, 64e-5)
    expected, got = rwkv7_hf_logits(folder), our_logits(folder)
    assert expected.std() > 0.5
    diff = (got - expected).abs().max().item()
    print(f"HF RWKV-7 (head size 64) vs rwkv7-hf: max |logit diff| = {diff:.2e}")
    assert diff <= 2e-5


def test_head_size_16_matches_rwkv7_hf_at_blinkdl_group_norm_epsilon(hs16):
    _, folder = hs16
    expected, got = rwkv7_hf_logits(folder, group_norm_eps=64e-5), our_logits(folder)
    diff = (got - expected).abs().max().item()
    print(f"HF RWKV-7 (head size 16, GroupNorm eps 64e-5) vs rwkv7-hf: max |logit diff| = {diff:.2e}")
    assert diff <= 2e-5
    # rwkv7-hf's own epsilon (16 * 1e-5) is a different model at this head size: the comparison can tell
    assert (got - rwkv7_hf_logits(folder)).abs().max().item() > 10 * max(diff, 1e-6)


def test_folder_matches_the_pth_it_came_from(hs16):
    pth, folder = hs16
    diff = (our_logits(folder) - our_logits(pth)).abs().max().item()
    print(f"HF RWKV-7 folder vs its .pth: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5


def test_sharded_folder_loads_the_same_tensors(hs16, tmp_path):
    pth, single = hs16
    _, sharded = converted(tmp_path, 16, 80, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = load_checkpoint(single), load_checkpoint(sharded)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_stacked_x_x_and_the_attention_spelling_load_identically(hs16, tmp_path):
    _, folder = hs16
    base = load_checkpoint(folder)
    for build, name in ((restack_x_x, "huggingface-rwkv7 (fla, stacked x_x)"),
                        (respell_rwkv7_attention, "huggingface-rwkv7 (attention spelling)")):
        other = load_checkpoint(build(folder, tmp_path / build.__name__))
        assert other.source_format == name
        assert other.config == base.config
        assert all(torch.equal(base.tensors[k], other.tensors[k]) for k in base.tensors), name


def _edited(folder: Path, out: Path, drop: tuple[str, ...] = (), **config_changes) -> Path:
    shutil.copytree(folder, out)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    write_weights({k: v for k, v in read_folder_tensors(folder).items() if not k.startswith(drop)}, out)
    config = json.loads((out / "config.json").read_text()) | config_changes
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_missing_pre_norm_with_norm_first_false_means_no_ln0(hs16, tmp_path):
    pth, folder = hs16
    no_ln0 = _edited(folder, tmp_path / "no_ln0", drop=("model.layers.0.pre_norm.",), norm_first=False)
    assert load_checkpoint(no_ln0).config.has_ln0 is False
    reference = load_model(pth, fold_ln0=False)
    reference.blocks[0].ln0 = None  # the same weights, the embedding entering layer 0 un-normalised
    with torch.no_grad():
        expected = reference(SEQUENCES, reference.init_state(3))[0]
    assert (our_logits(no_ln0) - expected).abs().max().item() <= 1e-5
    assert (our_logits(no_ln0) - our_logits(pth)).abs().max().item() > 1e-3


def test_missing_pre_norm_with_norm_first_runs_a_fresh_layer_norm_as_rwkv7_hf_does(hs16, tmp_path):
    _, folder = hs16
    fresh = _edited(folder, tmp_path / "fresh", drop=("model.layers.0.pre_norm.",))
    diff = (our_logits(fresh) - rwkv7_hf_logits(fresh, group_norm_eps=64e-5)).abs().max().item()
    assert diff <= 2e-5


def test_tied_embeddings_without_lm_head(hs16, tmp_path):
    pth, folder = hs16
    tied = _edited(folder, tmp_path / "tied", drop=("lm_head.",), tie_word_embeddings=True)
    ckpt = load_checkpoint(tied)
    assert torch.equal(ckpt.tensors["head.weight"], load_checkpoint(pth).tensors["emb.weight"])
    untied = _edited(folder, tmp_path / "untied", drop=("lm_head.",))
    with pytest.raises(CheckpointError, match="missing keys head.weight"):
        load_checkpoint(untied)


def test_layer_norm_epsilon_comes_from_config(hs16, tmp_path):
    _, folder = hs16
    ckpt = load_checkpoint(_edited(folder, tmp_path / "eps", norm_eps=1e-6))
    assert (ckpt.config.ln_eps, ckpt.config.ln_x_eps) == (1e-6, 64e-5)


def test_export_of_the_folder_matches_export_of_the_pth(hs16, tmp_path):
    """The package built from the folder computes the same logits in ONNX Runtime as the one built from the .pth."""
    import numpy as np
    from tests.helpers.onnx_compare import package_logits

    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    pth, folder = hs16
    logits = []
    for source in (pth, folder):
        manifest = export_package(source, tmp_path / source.name, ExportOptions())
        assert manifest.source["format"] == load_checkpoint(source).source_format
        logits.append(package_logits(tmp_path / source.name, SEQUENCES[0]))
    diff = float(np.abs(logits[0] - logits[1]).max())
    print(f"export of HF RWKV-7 folder vs export of its .pth (ONNX Runtime): max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5


def test_the_key_maps_read_no_values(hs16, tmp_path):
    """The lazy-loading contract: a layout is found and mapped from names and shapes alone (meta tensors hold
    no data), giving the same names and shapes as the eager load."""
    from rwkv_deploy.models.checkpoint.hf_folder import hf_folder_layout

    _, folder = hs16
    for source in (folder, restack_x_x(folder, tmp_path / "x_x")):
        meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in read_folder_tensors(source).items()}
        eager = hf_folder_layout(source, read_folder_tensors(source))
        lazy = hf_folder_layout(source, meta)
        assert {k: v.shape for k, v in lazy.tensors.items()} == {k: v.shape for k, v in eager.tensors.items()}
        assert (lazy.format, lazy.settings) == (eager.format, eager.settings)
