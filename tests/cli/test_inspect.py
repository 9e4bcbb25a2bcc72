"""`rwkv-deploy inspect`: the human table and the JSON object."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from tests.helpers.random_checkpoints import make_checkpoint

runner = CliRunner()


@pytest.mark.parametrize("version,heads", [("4", None), ("5.2", 2), ("6", 2), ("7", 2)])
def test_inspect_json(version, heads, tmp_path):
    extra = {} if version == "4" else {"head_size": 32}
    path = tmp_path / "m.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in
                make_checkpoint(version, n_layer=3, n_embd=64, vocab_size=301, **extra).items()}, path)
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == version
    assert (info["n_layer"], info["n_embd"], info["vocab_size"]) == (3, 64, 301)
    assert info["n_head"] == heads
    assert info["head_size"] == (32 if heads else None)
    assert info["stored_dtype"] == "bf16"
    # recurrent state per sequence, fp32: v4 5 vectors of C per layer; v5+ 2 vectors + H*N*N per layer
    per_layer = 5 * 64 if version == "4" else 2 * 64 + 2 * 32 * 32
    assert info["state_bytes_per_sequence"] == 3 * per_layer * 4
    assert info["parameters"] > 0


def test_inspect_table_names_the_version(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=32, vocab_size=97), path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "RWKV version      7" in result.stdout
    assert "2 x 32" in result.stdout
