"""Helpers of the Node.js and browser tests: the Python runtime's answers and runners for the JS entry points."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.runtime import DeploymentPackage, Generator, OnnxStepBackend

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "deploy" / "node"
WEB_DIR = REPO / "deploy" / "web"
CLI = NODE_DIR / "cli.js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (under CI) when a tool the test needs is missing."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test: `make setup` installs it)")
    pytest.skip(f"{reason}; run `make setup` to install it")


def run_node(node: str, *args: str | Path, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([node, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


# -- the Python runtime's answers ------------------------------------------------------------------------

@dataclass
class Reference:
    prompt_ids: list[int]
    token_ids: list[int]
    logits: np.ndarray  # [prompt + generated steps, vocab]: the logits after each fed token
    text: str


def python_greedy(package_dir: Path, prompt: str | list[int], max_tokens: int) -> Reference:
    """Greedy generation with runtime.Generator on OnnxStepBackend (CPU), and the logits of every step."""
    package = DeploymentPackage.open(package_dir)
    backend = OnnxStepBackend(package, providers=["CPUExecutionProvider"], threads=1)
    result = Generator(backend, package.tokenizer).generate(prompt, max_tokens=max_tokens, temperature=0)
    prompt_ids = package.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    state, logits = backend.fresh_state(1), []
    for token in prompt_ids + result.token_ids:
        step_logits, state = backend.step(np.array([token], np.int64), state)
        logits.append(step_logits[0])
    return Reference(prompt_ids, result.token_ids, np.stack(logits), result.text)


def node_greedy(node: str, package_dir: Path, prompt: str | list[int], max_tokens: int, dump: Path) -> dict:
    """Greedy generation with the Node CLI; returns its --dump-logits JSON (+ 'stdout')."""
    source = ["--prompt", prompt] if isinstance(prompt, str) else ["--tokens", ",".join(map(str, prompt))]
    out = run_node(node, CLI, package_dir, *source, "--max-tokens", str(max_tokens), "--greedy", "--threads", "1",
                   "--quiet", "--dump-logits", dump)
    assert out.returncode == 0, out.stderr
    data = json.loads(dump.read_text())
    data["stdout"] = out.stdout
    return data
