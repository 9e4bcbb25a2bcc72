"""Run the PyTorch reference and an exported package side by side, each carrying its own state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
import torch

from rwkv_deploy.models import load_model

STEPS = 64


def run_both(ckpt: Path, package: Path, batch: int, steps: int = STEPS, seed: int = 0,
             **load_options) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per step: (reference logits, artifact logits), each side carrying its own state; `load_options` go to
    the reference's `load_model` (e.g. ln_x_eps)."""
    manifest = json.loads((package / "manifest.json").read_text())
    session = ort.InferenceSession(str(package / manifest["graphs"]["step"]["path"]), providers=["CPUExecutionProvider"])
    model = load_model(ckpt, **load_options)
    ref_state = model.init_state(batch)
    art_state = {e["input"]: np.full([batch, *e["shape"][1:]], e["init"], dtype=np.float32) for e in manifest["state"]}
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        tokens = rng.integers(0, manifest["model"]["vocab_size"], batch)
        with torch.no_grad():
            ref, ref_state = model.step(torch.from_numpy(tokens), ref_state)
        outputs = session.run(None, {"token": tokens, **art_state})
        names = [o.name for o in session.get_outputs()]
        result = dict(zip(names, outputs))
        art_state = {e["input"]: result[e["output"]] for e in manifest["state"]}
        yield ref.numpy(), result["logits"]


def package_logits(package: Path, tokens: list[int] | np.ndarray) -> np.ndarray:
    """The step graph's logits [T, vocab] for one sequence fed `tokens` one at a time from a fresh state."""
    manifest = json.loads((package / "manifest.json").read_text())
    session = ort.InferenceSession(str(package / manifest["graphs"]["step"]["path"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = {e["input"]: np.full([1, *e["shape"][1:]], e["init"], dtype=np.float32) for e in manifest["state"]}
    out = []
    for token in np.asarray(tokens).tolist():
        result = dict(zip(names, session.run(None, {"token": np.array([token], dtype=np.int64), **state})))
        state = {e["input"]: result[e["output"]] for e in manifest["state"]}
        out.append(result["logits"])
    return np.concatenate(out)
