"""The one interface every tokenizer offers, so exporters and runtimes never care which one they hold.

Text and bytes are both first-class: RWKV World models are byte-level, so a runtime that
streams output token by token needs the exact bytes of each token (`decode_bytes`), not a
string that may end in half a UTF-8 character.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from rwkv_deploy.errors import RefusedError


class TokenizerError(RefusedError, ValueError):
    """A tokenizer that cannot be loaded or an id it cannot decode.

    It is a `ValueError` too, so callers that only know the standard library can catch it.
    """


def require_file(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise a one-line TokenizerError naming it if it is not a file."""
    file = Path(path)
    if not file.is_file():
        raise TokenizerError(f"{what} not found: {file}")
    return file


def join_token_bytes(table: Mapping[int, bytes], ids: Sequence[int], vocab: object) -> bytes:
    """Concatenate `table[id]` for each id; TokenizerError names the first id not in `vocab`."""
    try:
        return b"".join([table[i] for i in ids])
    except KeyError as exc:
        raise TokenizerError(f"token id {exc.args[0]!r} is not in the vocab of {vocab}") from None
    except TypeError:
        raise TokenizerError(f"token ids must be integers, got {list(ids)[:8]!r}") from None


class Tokenizer(ABC):
    """Maps text (or raw bytes) to token ids and back.

    Subclasses implement `encode_bytes` and `decode_bytes`; `encode` and `decode` go through
    UTF-8, and `decode` replaces invalid UTF-8 with U+FFFD like `errors="replace"`.
    """

    kind: ClassVar[str]
    """Short name used by `load_tokenizer` and in deployment manifests: "world", "hf" or "bytes"."""

    vocab_size: int
    """Number of rows of the model's embedding; may exceed the ids the tokenizer ever emits."""

    eos_token_id: int | None
    """Id that ends a document, or None if the tokenizer has none."""

    @abstractmethod
    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids for raw bytes."""

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes the ids stand for, concatenated; raises TokenizerError for unknown ids."""

    @abstractmethod
    def files(self) -> list[Path]:
        """Data files a deployment package must carry to rebuild this tokenizer."""

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`, encoded as UTF-8."""
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, files={[str(f) for f in self.files()]})"
