"""Tokenizers a deployed RWKV model can use, behind one interface (`Tokenizer`).

`load_tokenizer(kind, path)` builds one from the kind recorded in a deployment manifest:
"world" (RWKV World vocab, vendored), "hf" (a Hugging Face tokenizer.json) or "bytes".
"""

from __future__ import annotations

from pathlib import Path

from .base import Tokenizer, TokenizerError
from .bytes import ByteTokenizer
from .hf import HFTokenizer
from .world import WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE, WorldTokenizer

__all__ = [
    "WORLD_VOCAB_FILE",
    "WORLD_VOCAB_SIZE",
    "TOKENIZER_KINDS",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerError",
    "WorldTokenizer",
    "load_tokenizer",
]

TOKENIZER_KINDS = ("world", "hf", "bytes")


def load_tokenizer(kind: str, path: str | Path | None = None, max_vocab: int | None = None) -> Tokenizer:
    """The tokenizer of `kind`; `path` is the World vocab (default: vendored), the tokenizer.json
    (or its folder) for "hf", and must be None for "bytes". A tokenizer.json with more tokens than `max_vocab`
    is refused before it is built. Raises TokenizerError (a ValueError)."""
    if kind == "world":
        return WorldTokenizer(path)
    if kind == "hf":
        if path is None:
            raise TokenizerError("tokenizer kind 'hf' needs the path of a tokenizer.json")
        return HFTokenizer(path, max_vocab=max_vocab)
    if kind == "bytes":
        if path is not None:
            raise TokenizerError(f"tokenizer kind 'bytes' takes no file, got {path}")
        return ByteTokenizer()
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")
