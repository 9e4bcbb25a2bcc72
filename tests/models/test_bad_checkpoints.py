"""Every kind of bad input gets one line naming the file and the problem (exit code 2 on the CLI)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.errors import CheckpointError
from rwkv_deploy.models import load_checkpoint
from tests.helpers.random_checkpoints import make_checkpoint


def v7() -> dict[str, torch.Tensor]:
    return make_checkpoint("7", n_layer=2, n_embd=64, head_size=32, vocab_size=97)


def write_text(path, text="hello, this is not a model\n"):
    path.write_text(text)
    return path


def write_truncated(path):
    torch.save(v7(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_safetensors(path):
    save_file({k: v.contiguous() for k, v in v7().items()}, path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[:8]) + b"{not json" + bytes(data[17:]))
    return path


def _rewrite_safetensors_header(path, edit):
    """A real safetensors file whose header is edited by `edit(header) -> header` (data left as it was)."""
    import json

    save_file({k: v.contiguous() for k, v in v7().items()}, path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(edit(json.loads(data[8:8 + n]))).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + n:])
    return path


def write_safetensors_beyond_file(path):
    def edit(header):
        header["emb.weight"]["data_offsets"][1] += 10**9
        return header
    return _rewrite_safetensors_header(path, edit)


def write_safetensors_wrong_size(path):
    def edit(header):
        header["head.weight"]["shape"] = [97, 65]
        return header
    return _rewrite_safetensors_header(path, edit)


def write_safetensors_huge_header(path):
    save_file({k: v.contiguous() for k, v in v7().items()}, path)
    data = bytearray(path.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


def write_not_rwkv(path):
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    return path


def write_inconsistent(path):
    sd = v7()
    sd["blocks.1.att.key.weight"] = torch.zeros(64, 32)
    torch.save(sd, path)
    return path


def write_missing_layer_key(path):
    sd = v7()
    del sd["blocks.1.ffn.value.weight"]
    torch.save(sd, path)
    return path


def write_unknown_version(path):
    sd = {k: v for k, v in v7().items() if ".att." not in k and ".ffn." not in k}
    torch.save(sd, path)
    return path


def write_deep_embed(path):
    sd = v7()
    sd["blocks.0.ffn.s_emb.weight"] = torch.zeros(97, 1024)
    torch.save(sd, path)
    return path


def write_nan(path):
    sd = v7()
    sd["blocks.1.att.value.weight"][0, 0] = float("nan")
    torch.save(sd, path)
    return path


def write_extra_keys(path):
    sd = make_checkpoint("4", n_layer=2, n_embd=64, vocab_size=97)
    sd["blocks.0.tiny_ln.weight"] = torch.ones(64)
    torch.save(sd, path)
    return path


CASES = {
    "text file": ("m.pth", write_text, "not a PyTorch checkpoint"),
    "truncated": ("m.pth", write_truncated, "truncated or corrupt"),
    "corrupt safetensors": ("m.safetensors", write_corrupt_safetensors, "corrupt safetensors"),
    "safetensors beyond file": ("m.safetensors", write_safetensors_beyond_file, "emb.weight lies outside the file"),
    "safetensors wrong size": ("m.safetensors", write_safetensors_wrong_size, "head.weight stores"),
    "safetensors huge header": ("m.safetensors", write_safetensors_huge_header, "header of 1,000,000,000,000 bytes"),
    "not rwkv": ("m.pth", write_not_rwkv, "not an RWKV checkpoint: missing keys emb.weight"),
    "inconsistent layers": ("m.pth", write_inconsistent, "blocks.1.att.key.weight has shape [64, 32], expected [64, 64]"),
    "missing key": ("m.pth", write_missing_layer_key, "missing keys blocks.1.ffn.value.weight"),
    "unknown version": ("m.pth", write_unknown_version, "unknown RWKV version"),
    "deep embed": ("m.pth", write_deep_embed, "DeepEmbed"),
    "nan": ("m.pth", write_nan, "blocks.1.att.value.weight contains NaN"),
    "extra keys": ("m.pth", write_extra_keys, "keys that RWKV-4 does not have: blocks.0.tiny_ln.weight"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_gives_one_clear_line(case, tmp_path):
    name, write, message = CASES[case]
    path = write(tmp_path / name)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path))
    assert message in text

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert str(path) in result.stderr and message in result.stderr
    assert result.stdout == ""


def test_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_real_process_exits_2_without_traceback(tmp_path):
    path = write_truncated(tmp_path / "cut.pth")
    proc = subprocess.run([sys.executable, "-m", "rwkv_deploy.cli.main", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: {path}:")
    assert len(proc.stderr.strip().splitlines()) == 1
