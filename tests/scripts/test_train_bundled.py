"""The bundled model's training script runs, learns, and writes a checkpoint our loader accepts.

Only a few steps on a small corpus: the real training takes tens of minutes and never runs in CI.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from rwkv_deploy.models import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_bundled.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_bundled", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_bundled"] = module
    spec.loader.exec_module(module)
    return module


def test_a_few_training_steps_lower_the_loss_and_write_a_v7_checkpoint(tmp_path):
    train = load_script()
    out = tmp_path / "tiny.pth"
    args = train.parse_args(["--out", str(out), "--steps", "30", "--batch", "8", "--ctx-len", "16",
                             "--n-layer", "1", "--n-embd", "32", "--lr", "1e-2", "--eval-every", "10",
                             "--modules", "textwrap", "string"])
    torch.manual_seed(0)
    summary = train.train(args)
    history = json.loads(Path(str(out) + ".history.json").read_text())["history"]
    assert summary["steps"] == 30
    assert history[-1]["loss"] < history[0]["loss"] - 1.0  # from ~ln(256)=5.5 it must learn bytes quickly

    ckpt = load_checkpoint(out)
    assert ckpt.config.version == "7"
    assert ckpt.stored_dtype == "bf16"
    assert (ckpt.config.n_layer, ckpt.config.n_embd, ckpt.config.vocab_size) == (1, 32, 256)
    raw = torch.load(out, weights_only=True)
    assert raw["blocks.0.att.x_r"].shape == (1, 1, 32)  # BlinkDL x070 layout
    assert raw["blocks.0.ln0.weight"].shape == (32,)


def test_corpus_is_the_standard_library():
    train = load_script()
    text, held_out = train.corpus()
    assert b"def " in text and b"import " in text
    assert len(text) > 1_000_000
    assert held_out not in text
