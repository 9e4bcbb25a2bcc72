"""Which tokenizer a package carries: asked for explicitly, or the one the vocabulary size implies."""

from __future__ import annotations

import shutil
from pathlib import Path

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.tokenization import WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE, load_tokenizer

from rwkv_deploy.package.manifest import TokenizerInfo


def choose_tokenizer(vocab_size: int, requested: str | None) -> tuple[str, Path | None]:
    """(kind, source file). `requested` is "world", "bytes", "none" or a tokenizer.json path."""
    if requested in ("world", "bytes", "none"):
        kind, source = requested, (Path(WORLD_VOCAB_FILE) if requested == "world" else None)
    elif requested:
        source = Path(requested)
        if source.is_dir():
            source = source / "tokenizer.json"
        if not source.is_file():
            raise RefusedError(f"{requested}: no such tokenizer file")
        kind = "hf"
    elif vocab_size == 256:
        kind, source = "bytes", None
    elif vocab_size == WORLD_VOCAB_SIZE:
        kind, source = "world", Path(WORLD_VOCAB_FILE)
    else:
        kind, source = "none", None
    if kind in ("world", "bytes", "hf"):
        tok = load_tokenizer(kind, source if kind != "bytes" else None)
        if tok.vocab_size > vocab_size:
            raise RefusedError(
                f"tokenizer {source or kind} has {tok.vocab_size} tokens but the model only {vocab_size}")
    return kind, source


def install_tokenizer(kind: str, source: Path | None, package_dir: Path) -> TokenizerInfo:
    """Copy the tokenizer's files into `package_dir/tokenizer/` and describe them for the manifest."""
    if kind in ("bytes", "none"):
        return TokenizerInfo(kind=kind, files=[], eos_token_id=None)
    target = package_dir / "tokenizer"
    target.mkdir(exist_ok=True)
    shutil.copyfile(source, target / source.name)
    tok = load_tokenizer(kind, target / source.name)
    return TokenizerInfo(kind=kind, files=[f"tokenizer/{source.name}"], eos_token_id=tok.eos_token_id)
