"""The committed golden packages (tests/golden/, written by scripts/make_golden.py): real small exports that fast
tests read instead of exporting. Read them in place; copy one (shutil.copytree) before changing anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
NAMES = ("v4-fp32", "v4-int8", "v7-fp32", "v7-int8")


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
