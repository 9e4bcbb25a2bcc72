"""The token sequences both sides are run on: random ids, and real text where the package has a tokenizer.

Random ids reach every row of the embedding (including ids a tokenizer rarely emits); real text drives
the model through the distributions it sees in use, where logits are peaked and errors matter most.
Every stream is [steps, batch]: row b of the batch is an independent sequence, fed one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rwkv_deploy.tokenization import Tokenizer

# Several scripts and some code, so a World / HF tokenizer produces long and short tokens, and a byte
# tokenizer produces multi-byte UTF-8 sequences.
SAMPLE_TEXT = """\
The quick brown fox jumps over the lazy dog while the river keeps flowing toward the sea.
Le renard brun saute par-dessus le chien paresseux ; l'été dernier, nous avons visité Montréal.
Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München!
Быстрая коричневая лиса прыгает через ленивую собаку.
敏捷的棕色狐狸跳过了懒狗。我们明天去北京看长城。
素早い茶色の狐がのろまな犬を飛び越える。東京は今日も晴れです。
빠른 갈색 여우가 게으른 개를 뛰어넘습니다.
الثعلب البني السريع يقفز فوق الكلب الكسول.
def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]

for i, x in enumerate(fibonacci(10)):
    print(f"{i:2d}: {x}")  # 0, 1, 1, 2, 3, 5 ...
"""


@dataclass(frozen=True)
class TokenStream:
    """`tokens[t, b]` is the token fed at step t to sequence b."""

    name: str
    tokens: np.ndarray
    description: str

    @property
    def steps(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[1])


def random_stream(vocab_size: int, steps: int, batch: int, seed: int) -> TokenStream:
    """Uniform random ids over the whole vocabulary, reproducible from `seed`."""
    tokens = np.random.default_rng(seed).integers(0, vocab_size, size=(steps, batch), dtype=np.int64)
    return TokenStream("random", tokens, f"uniform random token ids in [0, {vocab_size}), seed {seed}")


def text_stream(tokenizer: Tokenizer, steps: int, batch: int) -> TokenStream:
    """SAMPLE_TEXT encoded once and repeated; sequence b starts b/batch of the way into it, so the rows differ."""
    ids = np.asarray(tokenizer.encode(SAMPLE_TEXT), dtype=np.int64)
    starts = [b * len(ids) // batch for b in range(batch)]
    positions = (np.arange(steps)[:, None] + np.asarray(starts)[None, :]) % len(ids)
    return TokenStream("text", ids[positions], f"built-in multilingual/code paragraph ({len(ids)} "
                       f"{tokenizer.kind} tokens), repeated; each sequence starts at a different offset")


def make_streams(vocab_size: int, tokenizer: Tokenizer | None, steps: int, batch: int, seed: int) -> list[TokenStream]:
    """The random stream, plus the text stream when the package has a tokenizer."""
    streams = [random_stream(vocab_size, steps, batch, seed)]
    if tokenizer is not None:
        streams.append(text_stream(tokenizer, steps, batch))
    return streams


def prompt_tokens(stream: TokenStream, length: int) -> np.ndarray:
    """The first `length` tokens of each sequence of `stream`, as prompts [batch, length] for greedy decoding."""
    return np.ascontiguousarray(stream.tokens[:length].T)
