"""Raw UTF-8 bytes as tokens: for byte-level toy models and tests, with no data file to ship."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Tokenizer, TokenizerError


class ByteTokenizer(Tokenizer):
    """Token id = byte value; 256 ids and no end-of-document token."""

    kind = "bytes"

    def __init__(self) -> None:
        self.vocab_size = 256
        self.eos_token_id = None

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return bytes(list(ids))  # list(): a numpy array would otherwise be read as a raw buffer
        except (ValueError, TypeError) as exc:
            raise TokenizerError(f"byte tokenizer ids must be integers 0..255: {exc}") from None

    def files(self) -> list[Path]:
        return []
