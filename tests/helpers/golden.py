"""The committed golden packages (tests/golden/, written by scripts/make_golden.py): real small exports that fast
tests read instead of exporting. Read them in place; copy one (shutil.copytree) before changing anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


@dataclass(frozen=True)
class GoldenSpec:
    """One committed package: 2 layers, 32 wide, vocab 256 (bytes tokenizer), with the prefill graph."""

    version: str
    precision: str
    seed: int = 0
    n_layer: int = 2
    n_embd: int = 32
    head_size: int = 16

    @property
    def name(self) -> str:
        return f"v{self.version}-{self.precision}"


SPECS = (GoldenSpec("4", "fp32"), GoldenSpec("4", "int8"), GoldenSpec("7", "fp32"), GoldenSpec("7", "int8"))


def checkpoint_path(root: Path, spec: GoldenSpec) -> Path:
    return root / f"v{spec.version}-seed{spec.seed}.pth"


def write_checkpoint(path: Path, spec: GoldenSpec) -> None:
    import torch

    from rwkv_deploy.models.random_checkpoint import make_checkpoint

    sizes = {} if spec.version == "4" else {"head_size": spec.head_size}
    torch.save(make_checkpoint(spec.version, n_layer=spec.n_layer, n_embd=spec.n_embd, vocab_size=256,
                               seed=spec.seed, **sizes), path)


NAMES = tuple(spec.name for spec in SPECS)


def golden_checkpoint(name: str, root: Path) -> Path:
    """Write the seeded random checkpoint the golden package `name` was exported from into `root` (no export:
    a fast test may call it) and return its path."""
    spec = next(s for s in SPECS if s.name == name)
    path = checkpoint_path(root, spec)
    if not path.exists():
        write_checkpoint(path, spec)
    return path


def golden_package(name: str) -> Path:
    """`golden_package("v7-fp32")`: the folder of one committed package (2 layers, 32 wide, vocab 256, bytes
    tokenizer, prefill graph)."""
    if name not in NAMES:
        raise KeyError(f"no golden package {name!r}; there are {', '.join(NAMES)}")
    return GOLDEN_DIR / name


def golden_expected(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [T], the PyTorch fp32 reference's logits [T, vocab]) committed beside the package."""
    with np.load(GOLDEN_DIR / f"{name}.expected.npz") as data:
        return data["tokens"], data["reference_logits"]
