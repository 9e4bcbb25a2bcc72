"""The RWKV "World" tokenizer (vocab rwkv_vocab_v20230424), reimplemented without `rwkv` or torch.

Deployments must tokenize exactly like the reference `rwkv.rwkv_tokenizer.TRIE_TOKENIZER`:
greedy longest match over the UTF-8 bytes. The reference builds a trie of 256-slot lists and
`eval`s the vocab file; this one parses the file with `ast.literal_eval` (a vocab file is data,
never code) and walks a trie of small dicts whose nodes know their longest token
(2-3x faster than the reference in pure Python, several MB/s).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Tokenizer, TokenizerError, join_token_bytes, require_file
from .untrusted import MAX_WORLD_BYTES, MAX_WORLD_LINES, check_file_size, world_line_problem

WORLD_VOCAB_FILE = Path(__file__).parent / "data" / "rwkv_vocab_v20230424.txt"
"""The vendored vocab (origin and licence: data/LICENSE-rwkv-vocab.txt)."""

WORLD_VOCAB_SIZE = 65536
"""Embedding rows of every World model; the vocab file uses ids 1..65529 of them."""

END_OF_DOCUMENT_ID = 0
"""`<|endoftext|>`: the model emits it to end a document; it stands for no bytes."""

_LONGEST = -1
"""Key under which a trie node stores (id, length) of the longest token on its path from the root."""

_TrieNode = dict[int, Any]
"""Next byte -> child node, plus `_LONGEST` -> (token id, token length) or None at the root."""


def _parse_literal(literal: str) -> object:
    """The value of a Python literal, safely; plain quoted text skips the (slow) parser."""
    quote, inner = literal[0], literal[1:-1]
    if len(literal) >= 2 and quote in "'\"" and literal[-1] == quote and quote not in inner and "\\" not in inner:
        return inner  # no escapes and no inner quote: the literal is exactly its inner text
    try:
        return ast.literal_eval(literal)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"not a Python str or bytes literal: {literal[:40]!r}") from None


def _parse_vocab_line(line: str) -> tuple[int, bytes]:
    """One `<id> <str or bytes literal> <byte length>` line; ValueError says what is wrong."""
    token_id, sep, rest = line.partition(" ")
    literal, sep2, length = rest.rpartition(" ")
    if not (sep and sep2 and literal):
        raise ValueError("expected '<id> <python str or bytes literal> <byte length>'")
    try:
        number, stated_length = int(token_id), int(length)
    except ValueError:
        raise ValueError("id and byte length must be integers") from None
    value = _parse_literal(literal)
    if isinstance(value, str):
        value = value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    if not isinstance(value, bytes):
        raise ValueError(f"literal is a {type(value).__name__}, not str or bytes")
    if len(value) != stated_length:
        raise ValueError(f"token is {len(value)} bytes but the line says {stated_length}")
    if not 0 < number < WORLD_VOCAB_SIZE:
        raise ValueError(f"id {number} outside 1..{WORLD_VOCAB_SIZE - 1} (0 is end-of-document)")
    if not value:
        raise ValueError("empty token")
    return number, value


def read_world_vocab(path: Path) -> dict[int, bytes]:
    """Id -> token bytes from a World vocab file; TokenizerError names the file and line on any flaw."""
    vocab: dict[int, bytes] = {}
    first_line_of: dict[bytes, int] = {}
    check_file_size(path, MAX_WORLD_BYTES, "World vocab")
    try:
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                line = line.rstrip("\n")
                if not line:
                    continue
                if len(vocab) >= MAX_WORLD_LINES:
                    raise TokenizerError(f"{path}:{line_number}: more than {MAX_WORLD_LINES} tokens")
                if problem := world_line_problem(line):
                    raise TokenizerError(f"{path}:{line_number}: bad World vocab line: {problem}")
                try:
                    token_id, token = _parse_vocab_line(line)
                    if token_id in vocab:
                        raise ValueError(f"id {token_id} appears twice")
                    if token in first_line_of:
                        raise ValueError(f"token {token!r} already on line {first_line_of[token]}")
                except ValueError as exc:
                    raise TokenizerError(f"{path}:{line_number}: bad World vocab line: {exc}") from None
                vocab[token_id] = token
                first_line_of[token] = line_number
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: World vocab is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    missing = [b for b in range(256) if bytes([b]) not in first_line_of]
    if missing:
        problem = f"lacks single-byte tokens for {len(missing)} byte values, e.g. {missing[:4]}"
        raise TokenizerError(f"{path}: World vocab {problem}")
    return vocab


def _build_trie(vocab: dict[int, bytes]) -> _TrieNode:
    """Every node knows the longest token ending on its path, so encoding only walks forward.

    Tokens go in shortest first: a new node inherits its parent's answer, which is then final,
    since any shorter token on the path is already in."""
    root: _TrieNode = {_LONGEST: None}
    for token_id, token in sorted(vocab.items(), key=lambda item: len(item[1])):
        node = root
        for byte in token:
            child = node.get(byte)
            if child is None:
                child = node[byte] = {_LONGEST: node[_LONGEST]}
            node = child
        node[_LONGEST] = (token_id, len(token))
    return root


class WorldTokenizer(Tokenizer):
    """RWKV World tokenizer: greedy longest-prefix match over bytes, 65536-row vocab, eos id 0.

    Id 0 (end-of-document) decodes to no bytes, so a generated `<|endoftext|>` never shows up
    in text; ids the vocab file does not define (65530..65535) raise TokenizerError.
    """

    kind = "world"

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        self.vocab_path = require_file(WORLD_VOCAB_FILE if vocab_path is None else vocab_path, "World vocab file")
        self.vocab_size = WORLD_VOCAB_SIZE
        self.eos_token_id = END_OF_DOCUMENT_ID
        vocab = read_world_vocab(self.vocab_path)
        self._trie = _build_trie(vocab)
        self._max_token_length = max(map(len, vocab.values()))
        self._id_to_bytes = {END_OF_DOCUMENT_ID: b"", **vocab}

    def encode_bytes(self, data: bytes) -> list[int]:
        # Hot loop, kept flat on purpose: per byte one dict lookup, and the slice is iterated
        # in C; each token's trie walk stops where no longer token can match.
        root, longest, max_length = self._trie, _LONGEST, self._max_token_length
        ids: list[int] = []
        append = ids.append
        start, size = 0, len(data)
        while start < size:
            node = root[data[start]]  # every single byte is a token, so this always exists
            for byte in data[start + 1 : start + max_length]:
                child = node.get(byte)
                if child is None:
                    break
                node = child
            token_id, length = node[longest]
            append(token_id)
            start += length
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return join_token_bytes(self._id_to_bytes, ids, self.vocab_path)

    def files(self) -> list[Path]:
        return [self.vocab_path]
