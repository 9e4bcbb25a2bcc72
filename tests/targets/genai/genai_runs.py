"""Greedy runs through ONNX Runtime GenAI and through our runtime, for the GenAI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ours(package_dir: Path, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits before each of them, from our runtime as `generate` runs it: the prompt
    through the prefill graph when the package has one, then the step graph one token at a time."""
    from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
    from rwkv_deploy.runtime.package import DeploymentPackage

    backend = OnnxStepBackend(DeploymentPackage.open(package_dir), threads=1)
    state = backend.fresh_state(1)
    if backend.has_prefill:
        logits, state = backend.prefill(np.array([prompt], dtype=np.int64), state)
    else:
        for token in prompt:
            logits, state = backend.step(np.array([token], dtype=np.int64), state)
    tokens, seen = [], []
    for _ in range(n):
        seen.append(np.asarray(logits[0], dtype=np.float32))
        tokens.append(int(np.argmax(logits[0])))
        logits, state = backend.step(np.array([tokens[-1]], dtype=np.int64), state)
    return tokens, seen


def genai(folder: Path, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy tokens per prompt from onnxruntime_genai (one batch), and the logits before each step."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max(map(len, prompts)) + n, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(model, params)
    longest = max(map(len, prompts))
    pad = model_pad_id(folder)
    generator.append_tokens(np.array([[pad] * (longest - len(p)) + p for p in prompts], dtype=np.int32))
    tokens: list[list[int]] = [[] for _ in prompts]
    seen = []
    for _ in range(n):
        generator.generate_next_token()  # runs the model on the last token (if any), then picks the next
        seen.append(np.array(generator.get_output("logits"), dtype=np.float32)[:, -1, :])
        for row, token in enumerate(generator.get_next_tokens().tolist()):
            tokens[row].append(int(token))
    return tokens, seen


def model_pad_id(folder: Path) -> int:
    import json

    return json.loads((folder / "genai_config.json").read_text())["model"]["pad_token_id"]
