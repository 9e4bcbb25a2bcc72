"""The manifest is a complete contract: a runtime that knows only manifest.json, numpy and
onnxruntime (as one in another language would) runs a package and gets the reference logits.

`drive_package` is that runtime. It runs in a fresh interpreter, which then proves that it never
loaded rwkv_deploy or torch. The package is a state-tuned RWKV-6, so the driver must also build the
fresh state from the package's init_file.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import load_model
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

TOKENS = np.random.default_rng(0).integers(0, 256, size=(16, 2)).tolist()  # 16 steps, batch 2


def drive_package(package_dir: str, token_rows: list[list[int]]) -> np.ndarray:
    """Logits [steps, batch, vocab] of a package, using manifest.json, numpy and onnxruntime only."""
    import hashlib
    import json
    import os

    import numpy as np
    import onnxruntime as ort

    def path(relative: str) -> str:
        return os.path.join(package_dir, relative)

    with open(path("manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format_version"] == 1
    for relative, digest in manifest["files"].items():
        with open(path(relative), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{relative} changed since export"

    batch = len(token_rows[0])
    state = {}
    for entry in manifest["state"]:
        shape = [batch if d == "batch" else d for d in entry["shape"]]
        if entry["init_file"]:
            per_sequence = np.load(path(entry["init_file"]))[entry["name"]]
            state[entry["input"]] = np.broadcast_to(per_sequence, shape).astype(entry["dtype"])
        else:
            state[entry["input"]] = np.full(shape, entry["init"], dtype=entry["dtype"])

    session = ort.InferenceSession(path(manifest["graphs"]["step"]["path"]), providers=["CPUExecutionProvider"])
    outputs = [manifest["logits_output"]] + [entry["output"] for entry in manifest["state"]]
    logits = []
    for tokens in token_rows:
        feeds = {manifest["token_input"]: np.array(tokens, dtype=np.int64), **state}
        step_logits, *new_state = session.run(outputs, feeds)
        logits.append(step_logits)
        state = {entry["input"]: value for entry, value in zip(manifest["state"], new_state)}
    return np.stack(logits)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("contract")
    ckpt = root / "tuned6.pth"
    torch.save(make_checkpoint("6", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=21, time_state=True),
               ckpt)
    export_package(ckpt, root / "out", ExportOptions())
    return ckpt, root / "out"


def reference_logits(ckpt: Path, token_rows: list[list[int]]) -> np.ndarray:
    model = load_model(ckpt).eval()
    tokens = torch.tensor(token_rows).T  # [batch, steps]
    with torch.no_grad():
        logits, _ = model(tokens, model.init_state(tokens.shape[0]))
    return logits.transpose(0, 1).numpy()  # [steps, batch, vocab]


def test_a_manifest_only_runtime_reproduces_the_reference(exported, tmp_path):
    ckpt, package_dir = exported
    assert any(entry["init_file"] for entry in json.loads((package_dir / "manifest.json").read_text())["state"])
    script = "\n".join([
        inspect.getsource(drive_package),
        "import sys",
        f"np.save({str(tmp_path / 'logits.npy')!r}, drive_package({str(package_dir)!r}, {TOKENS!r}))",
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rwkv_deploy', 'torch', 'tests')))",
    ])
    out = subprocess.run([sys.executable, "-c", "import numpy as np\n" + script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # nothing of this project was needed
    logits = np.load(tmp_path / "logits.npy")
    assert np.abs(logits - reference_logits(ckpt, TOKENS)).max() <= 1e-4
