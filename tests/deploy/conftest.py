"""Fixtures of the Node.js and browser tests: real exported packages and the JS tools.

The JS tests need `node` with deploy/node's and deploy/web's npm packages, and Chromium. `make setup`
installs all of them; where they are missing the tests skip with the reason, except under CI (environment
variable CI set), where a missing tool fails them instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from tests.deploy.jsutil import CHROMIUM, NODE_DIR, WEB_DIR, require
from tests.helpers.random_checkpoints import make_checkpoint
from tests.helpers.small_packages import export_small


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    require(path is not None, "node is not installed")
    require((NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
            "onnxruntime-node is not installed in deploy/node/node_modules (npm ci in deploy/node)")
    return path


@pytest.fixture(scope="session")
def chromium(node) -> Path:
    require(CHROMIUM.is_file(), f"{CHROMIUM} is not installed (apt-get install chromium)")
    require((WEB_DIR / "node_modules" / "playwright-core").is_dir() and
            (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir(),
            "playwright-core/onnxruntime-web are not installed in deploy/web/node_modules (npm ci in deploy/web)")
    return CHROMIUM


# -- packages -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def v4_pkg(tmp_path_factory) -> Path:
    """Random 2-layer RWKV-4 (no tokenizer): its att_pp state starts at -1e30, not 0."""
    return export_small(tmp_path_factory.mktemp("js-v4"), "4")


@pytest.fixture(scope="session")
def tuned_pkg(tmp_path_factory) -> Path:
    """Random state-tuned RWKV-6 (no tokenizer): its wkv states start from initial_state.npz."""
    root = tmp_path_factory.mktemp("js-tuned")
    ckpt = root / "tuned6.pth"
    torch.save(make_checkpoint("6", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=5, time_state=True), ckpt)
    export_package(ckpt, root / "pkg", ExportOptions(tokenizer="none"))
    return root / "pkg"


@pytest.fixture(scope="session")
def external_pkg(tmp_path_factory) -> Path:
    """Random 2-layer RWKV-7 (byte tokenizer) whose weights are ONNX external data (graphs.step.external_data)."""
    root = tmp_path_factory.mktemp("js-external")
    ckpt = root / "v7.pth"
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=3), ckpt)
    export_package(ckpt, root / "pkg", ExportOptions(tokenizer="bytes", external_data=True))
    return root / "pkg"


@pytest.fixture(scope="session")
def world_pkg(tmp_path_factory) -> Path:
    """Random 1-layer RWKV-7 with the 65536-token World vocabulary and its tokenizer file in the package."""
    root = tmp_path_factory.mktemp("js-world")
    ckpt = root / "world7.pth"
    torch.save(make_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=65536, seed=4), ckpt)
    export_package(ckpt, root / "pkg", ExportOptions(tokenizer="world"))
    return root / "pkg"
