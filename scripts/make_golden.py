"""Write the golden packages the fast test tier reads (tests/golden/): small real exports of seeded random RWKV-4
and RWKV-7 checkpoints at fp32 and int8, each with the PyTorch fp32 reference's logits on a fixed token stream.
They let tests run a real package without exporting one (an export costs seconds; `make test-fast` has a
minute). Run it again when the package format or the exporter changes on purpose; the slow test
tests/test_golden_data.py fails when a fresh export no longer matches what is committed.

    python scripts/make_golden.py             # rewrite tests/golden/
    python scripts/make_golden.py --out DIR   # write elsewhere (the slow test does this)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.golden import GOLDEN_DIR, SPECS, checkpoint_path, write_checkpoint  # noqa: E402

PROMPT = b"Golden data: the quick brown fox jumps over the lazy dog."  # 56 tokens of the bytes tokenizer
EXPECTED_SUFFIX = ".expected.npz"


def reference_logits(checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    """[T, vocab] fp32 logits of the PyTorch reference fed `tokens` one at a time from the initial state."""
    from rwkv_deploy.models import load_model

    return load_model(checkpoint).eval().stream_logits(tokens)


def write_golden(out: Path) -> list[Path]:
    """Export every spec into `out` (replacing what is there) with its `<name>.expected.npz`; return the packages."""
    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    out.mkdir(parents=True, exist_ok=True)
    tokens = np.frombuffer(PROMPT, dtype=np.uint8).astype(np.int64)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for spec in SPECS:
            checkpoint = checkpoint_path(Path(scratch), spec)
            if not checkpoint.exists():
                write_checkpoint(checkpoint, spec)
            package = out / spec.name
            export_package(checkpoint, package, ExportOptions(precision=spec.precision, tokenizer="bytes",
                                                              prefill=True, force=True))
            np.savez(out / f"{spec.name}{EXPECTED_SUFFIX}", tokens=tokens,
                     reference_logits=reference_logits(checkpoint, tokens))
            written.append(package)
    (out / "README.md").write_text(
        "# Golden packages\n\nWritten by `python scripts/make_golden.py`; do not edit by hand. Each folder is a "
        "real package (2 layers, 32 wide, vocab 256, bytes tokenizer, prefill graph) of a seeded random "
        "checkpoint; `<name>.expected.npz` holds the token stream and the PyTorch fp32 reference's logits on "
        "it.\n\n" + "\n".join(f"- `{s.name}`: RWKV-{s.version}, {s.precision}, seed {s.seed}" for s in SPECS)
        + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="folder to write (default: tests/golden)")
    args = parser.parse_args(argv)
    packages = write_golden(args.out)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"packages": [p.name for p in packages], "bytes": total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
