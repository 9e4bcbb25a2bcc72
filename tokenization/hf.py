"""A Hugging Face `tokenizer.json` (e.g. GPT-NeoX 20B for RWKV-4 Pile models), read from disk only.

The `tokenizers` library does the work; this wrapper gives it the common interface. Nothing is
ever downloaded: the file must already be on disk and is shipped with the deployment.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders

from .base import Tokenizer, TokenizerError, join_token_bytes, require_file
from .untrusted import check_hf_json, encode_within_budget

EOS_TOKEN_CANDIDATES = ("<|endoftext|>", "</s>")
"""Tokens taken as end-of-document, first found wins, when no `eos_token` is given."""


def _byte_level_alphabet() -> dict[str, int]:
    """Char -> byte of the GPT-2 byte-level BPE alphabet (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_of = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(256) if byte not in char_of)
    char_of.update({byte: chr(256 + n) for n, byte in enumerate(shifted)})
    return {char: byte for byte, char in char_of.items()}


def _byte_level_bytes(token: str, alphabet: dict[str, int]) -> bytes:
    """Bytes of one byte-level BPE token; like the library's ByteLevel decoder, a token with any
    char outside the alphabet stands for its own UTF-8."""
    try:
        return bytes(alphabet[char] for char in token)
    except KeyError:
        return token.encode("utf-8")


class HFTokenizer(Tokenizer):
    """Wraps `tokenizers.Tokenizer.from_file`; `path` is a tokenizer.json or a folder holding one.

    `encode` adds no special tokens (callers add BOS/EOS explicitly); `decode` skips special
    tokens like the library's default. `decode_bytes` is exact per token for byte-level BPE
    tokenizers (so streaming can cut inside a UTF-8 character); for any other kind it is
    `decode(ids)` encoded as UTF-8, which turns a cut character into U+FFFD. Likewise
    `encode_bytes` only accepts valid UTF-8.
    """

    kind = "hf"

    def __init__(self, path: str | Path, eos_token: str | None = None, max_vocab: int | None = None) -> None:
        file = Path(path)
        self.path = require_file(file / "tokenizer.json" if file.is_dir() else file, "tokenizer.json")
        check_hf_json(self.path, max_vocab)  # sizes, vocabulary and regexes before the library builds anything
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        except BaseException as exc:  # the Rust side raises a bare Exception, or panics
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"{self.path}: not a Hugging Face tokenizer.json: {reason}") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = self._find_eos(eos_token)
        byte_level = isinstance(self._tokenizer.decoder, decoders.ByteLevel)
        self._id_to_bytes = self._byte_level_table() if byte_level else None

    def _find_eos(self, eos_token: str | None) -> int | None:
        if eos_token is None:
            found = (self._tokenizer.token_to_id(token) for token in EOS_TOKEN_CANDIDATES)
            return next((token_id for token_id in found if token_id is not None), None)
        token_id = self._tokenizer.token_to_id(eos_token)
        if token_id is None:
            raise TokenizerError(f"{self.path}: eos token {eos_token!r} is not in the vocab")
        return token_id

    def _byte_level_table(self) -> dict[int, bytes]:
        """Id -> exact bytes: BPE tokens through the byte alphabet, added tokens as their UTF-8
        text, special tokens as nothing (matching `decode`)."""
        alphabet = _byte_level_alphabet()
        table = {
            token_id: _byte_level_bytes(token, alphabet)
            for token, token_id in self._tokenizer.get_vocab(with_added_tokens=False).items()
        }
        for token_id, added in self._tokenizer.get_added_tokens_decoder().items():
            table[token_id] = b"" if added.special else added.content.encode("utf-8")
        return table

    def encode(self, text: str) -> list[int]:
        """Under a time budget, in a worker thread (`untrusted.encode_within_budget`)."""
        return encode_within_budget(lambda: self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids,
                                    len(text), self.path)

    def encode_bytes(self, data: bytes) -> list[int]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"{exc.reason} at byte {exc.start}"
            raise NotImplementedError(f"HF tokenizers encode text, and these bytes are not UTF-8: {problem}") from None
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [operator.index(i) for i in ids]  # plain ints for the Rust side, numpy ints welcome
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:  # the library would silently skip it
            raise TokenizerError(f"token id {bad!r} is not in the vocab of {self.path}")
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        if self._id_to_bytes is None:
            return self.decode(ids).encode("utf-8")
        return join_token_bytes(self._id_to_bytes, ids, self.path)

    def files(self) -> list[Path]:
        return [self.path]
