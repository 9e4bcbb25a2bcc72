"""Small packages for tests: real exports of random checkpoints, and hand-made manifests for shape-only tests."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch

from rwkv_deploy.package.manifest import MANIFEST_NAME, GraphInfo, Manifest, ModelInfo, StateEntry, TokenizerInfo
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.fileio import write_atomically
from tests.helpers.across_workers import made_once
from tests.helpers.random_checkpoints import make_checkpoint

VOCAB = 256


def small_checkpoint(path: Path | BinaryIO, version: str, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                     vocab_size: int = VOCAB, **extra) -> Path | BinaryIO:
    """Save a small random RWKV-`version` checkpoint (head size 16 from v5 on) to `path` (or an open file)."""
    sizes = {} if version == "4" else {"head_size": 16}
    torch.save(make_checkpoint(version, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, seed=seed,
                               **(sizes | extra)), path)
    return path


def small_checkpoint_path(root: Path, version: str, seed: int = 0) -> Path:
    """Where `export_small(root, version, seed=seed)` keeps the checkpoint it exported."""
    return root / f"v{version}-seed{seed}.pth"


def export_small(root: Path, version: str, precision: str = "fp32", seed: int = 0, **options) -> Path:
    """Export a 2-layer, 64-wide random RWKV-`version` checkpoint (vocab 256, no tokenizer unless `options`
    say otherwise) to `root`; `options` are further ExportOptions fields (prefill=True, ...)."""
    checkpoint = small_checkpoint_path(root, version, seed)
    made_once(checkpoint, lambda: write_atomically(checkpoint, lambda f: small_checkpoint(f, version, seed)))
    suffix = "".join(f"-{k}-{v}" for k, v in sorted(options.items()))
    out = root / f"v{version}-{precision}-seed{seed}{suffix}"
    return made_once(out, lambda: export_package(
        checkpoint, out, ExportOptions(**{"precision": precision, "tokenizer": "none", **options})))


def shared(shared_package, version: str, precision: str = "fp32", prefill: bool = True) -> Path:
    """The session's small export of `version` (bytes tokenizer; with the prefill graph unless told)."""
    return shared_package(version, precision, tokenizer="bytes", **({"prefill": True} if prefill else {}))


def v7_manifest(n_layer: int = 2, n_embd: int = 64, head_size: int = 16) -> Manifest:
    """The manifest an RWKV-7 export of these sizes has (no files): for tests that need shapes only."""
    n_head = n_embd // head_size
    state = []
    for layer in range(n_layer):
        for name, shape in ((f"layer{layer}.att_shift", ["batch", n_embd]),
                            (f"layer{layer}.wkv", ["batch", n_head, head_size, head_size]),
                            (f"layer{layer}.ffn_shift", ["batch", n_embd])):
            state.append(StateEntry(name, f"state_in.{name}", f"state_out.{name}", shape, "float32", 0.0))
    return Manifest(
        model=ModelInfo("7", n_layer, n_embd, n_head, head_size, VOCAB, 4 * n_embd),
        graphs={"step": GraphInfo("model.onnx", "fp32", 18)}, state=state,
        tokenizer=TokenizerInfo("none"), files={"model.onnx": "0" * 64})


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return directory


class SmallPackages:
    """The packages the Triton tests serve, by kind: "4", "5.0", ..., "7" (export_small, seed 1), "6-tuned" (a
    state-tuned RWKV-6) and "7-external" (an RWKV-7, seed 2, with its weights as ONNX external data). Versions and
    external data come from the session's `shared_package`; the tuned one is exported here, on first use."""

    def __init__(self, shared_package, root: Path) -> None:
        self.shared_package, self.root = shared_package, root
        self._tuned: Path | None = None

    def __getitem__(self, kind: str) -> Path:
        version, _, variant = kind.partition("-")
        if not variant:
            return self.shared_package(version, seed=1)
        if variant == "external":
            return self.shared_package(version, seed=2, external_data=True)
        if variant != "tuned":
            raise KeyError(kind)
        out = self.root / kind

        def export_tuned() -> None:
            checkpoint = small_checkpoint(self.root / f"{kind}.pth", version, seed=2, time_state=True)
            export_package(checkpoint, out, ExportOptions(tokenizer="none"))

        return made_once(out, export_tuned)
