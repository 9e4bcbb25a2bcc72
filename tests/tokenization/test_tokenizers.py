"""Tokenizers: World ids match the `rwkv` package's reference tokenizer exactly, every tokenizer
round-trips, and broken inputs fail with one clear line."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import rwkv.rwkv_tokenizer
import tokenizers
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.tokenization import (
    WORLD_VOCAB_FILE,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    WorldTokenizer,
    load_tokenizer,
)

PACKAGE_VOCAB_FILE = Path(rwkv.rwkv_tokenizer.__file__).with_name("rwkv_vocab_v20230424.txt")

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:14 pm -- isn't it?",
    "chinese": "我们正在把语言模型导出为 ONNX，然后在没有 PyTorch 的机器上运行它。",
    "japanese": "吾輩は猫である。名前はまだ無い。カタカナとひらがなを混ぜる。",
    "korean": "안녕하세요, 세계!",
    "russian": "Съешь же ещё этих мягких французских булок.",
    "arabic": "مرحبا بالعالم، هذا اختبار للترميز.",
    "emoji": "🙂👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️‍🔥 🫠",
    "code": 'def f(x: int) -> dict[str, int]:\n\treturn {"x": x ** 2}  # comment\n',
    "whitespace_runs": "a" + " " * 37 + "b\t\t\tc" + " " * 200 + "\u3000\u00a0d",
    "newlines": "line one\n\nline two\r\n\r\n\n\n\nend\n",
    "combining": "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "mixed": "RWKV-7 \"Goose\" 🪿: 65536 tokens, 中文 + English + العربية.\n",
}


@pytest.fixture(scope="module")
def reference() -> TRIE_TOKENIZER:
    """BlinkDL's own tokenizer, on the vocab file shipped in the `rwkv` package."""
    return TRIE_TOKENIZER(str(PACKAGE_VOCAB_FILE))


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


def random_text(rng: random.Random, length: int) -> str:
    """Characters from every script in SAMPLES plus arbitrary code points (no surrogates)."""
    pool = "".join(SAMPLES.values())
    chars = []
    for _ in range(length):
        if rng.random() < 0.8:
            chars.append(rng.choice(pool))
        else:
            code_point = rng.randrange(0x110000)
            chars.append(chr(code_point) if not 0xD800 <= code_point < 0xE000 else " ")
    return "".join(chars)


# --- World -------------------------------------------------------------------------------------


def test_vendored_vocab_is_the_package_vocab_with_lf_line_endings() -> None:
    package_text = PACKAGE_VOCAB_FILE.read_bytes().replace(b"\r\n", b"\n")
    assert WORLD_VOCAB_FILE.read_bytes() == package_text
    assert (WORLD_VOCAB_FILE.parent / "LICENSE-rwkv-vocab.txt").read_text().count("Apache License") >= 1


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_world_ids_match_reference_on_samples(name: str, world: WorldTokenizer, reference: TRIE_TOKENIZER) -> None:
    text = SAMPLES[name]
    assert world.encode(text) == reference.encode(text)


def test_world_ids_match_reference_on_long_mixed_text(world: WorldTokenizer, reference: TRIE_TOKENIZER) -> None:
    text = "\n\n".join(SAMPLES.values()) * 5
    assert world.encode(text) == reference.encode(text)


def test_world_ids_match_reference_on_random_text(world: WorldTokenizer, reference: TRIE_TOKENIZER) -> None:
    rng = random.Random(20230424)
    for _ in range(300):
        text = random_text(rng, rng.randrange(1, 80))
        assert world.encode(text) == reference.encode(text), repr(text)


def test_world_ids_match_reference_on_glued_vocab_tokens(world: WorldTokenizer, reference: TRIE_TOKENIZER) -> None:
    """Concatenated real tokens are where a wrong longest-match rule would show."""
    rng = random.Random(7)
    tokens = list(reference.idx2token.values())
    for _ in range(300):
        data = b"".join(rng.choices(tokens, k=rng.randrange(1, 12)))
        assert world.encode_bytes(data) == reference.encodeBytes(data), data


def test_world_ids_match_reference_on_random_bytes(world: WorldTokenizer, reference: TRIE_TOKENIZER) -> None:
    rng = random.Random(1)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(1, 64))
        assert world.encode_bytes(data) == reference.encodeBytes(data), data


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_world_text_round_trips(name: str, world: WorldTokenizer) -> None:
    assert world.decode(world.encode(SAMPLES[name])) == SAMPLES[name]


def test_world_random_bytes_round_trip_including_invalid_utf8(world: WorldTokenizer) -> None:
    rng = random.Random(2)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 100))
        assert world.decode_bytes(world.encode_bytes(data)) == data


def test_world_decode_replaces_invalid_utf8_and_skips_end_of_document(world: WorldTokenizer) -> None:
    cut_character = world.encode_bytes("a中".encode()[:-1])  # 'a' + two of the three bytes of 中
    assert world.decode(cut_character) == "a\ufffd"
    assert world.eos_token_id == 0
    assert world.decode([*world.encode("hi"), 0]) == "hi"


def test_world_interface_values(world: WorldTokenizer) -> None:
    assert isinstance(world, Tokenizer)
    assert (world.kind, world.vocab_size) == ("world", 65536)
    assert world.files() == [WORLD_VOCAB_FILE]
    assert world.encode("") == []


def test_world_rejects_ids_outside_the_vocab(world: WorldTokenizer) -> None:
    with pytest.raises(TokenizerError, match="65530"):
        world.decode([65530])  # a model row that no vocab line defines


def test_world_longest_match_on_a_tiny_vocab(tmp_path: Path) -> None:
    """Greedy longest match: 'abcab' is 'abc' + 'ab', never 'ab' + 'ca' + 'b'."""
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += ["257 'ab' 2", "258 'abc' 3", "259 'ca' 2", "260 '中' 3", "261 \"it's\" 4", "262 'x\\ty' 3"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = WorldTokenizer(vocab)
    assert tokenizer.encode("abcab") == [258, 257]
    assert tokenizer.encode("中c") == [260, ord("c") + 1]
    assert tokenizer.encode("it's x\ty") == [261, ord(" ") + 1, 262]  # escapes in literals are honoured
    assert tokenizer.files() == [vocab]


def test_world_encodes_a_megabyte_in_reasonable_time(world: WorldTokenizer) -> None:
    """Guards against accidentally quadratic encoding; the real speed is several MB/s."""
    text = ("".join(SAMPLES.values()) * 2000)[:1_000_000]
    start = time.perf_counter()
    world.encode(text)
    assert time.perf_counter() - start < 10.0


BAD_VOCAB_LINES = {
    "code instead of a literal": "257 'ab'.upper() 2",  # eval would accept it as 'AB'
    "length mismatch": "257 'abc' 4",
    "not str or bytes": "257 123 3",
    "missing length": "257 'ab'",
    "id not an integer": "x 'ab' 2",
    "id zero is reserved": "0 'ab' 2",
    "duplicate token": "257 'a' 1",
    "duplicate id": "256 'ab' 2",
}


@pytest.mark.parametrize("problem", sorted(BAD_VOCAB_LINES))
def test_malformed_world_vocab_names_file_and_line(problem: str, tmp_path: Path) -> None:
    good = WORLD_VOCAB_FILE.read_text(encoding="utf-8").splitlines()[:256]  # ids 1..256, single bytes
    vocab = tmp_path / "bad_vocab.txt"
    vocab.write_text("\n".join([*good, BAD_VOCAB_LINES[problem]]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError) as raised:
        WorldTokenizer(vocab)
    message = str(raised.value)
    assert message.startswith(f"{vocab}:257: ")
    assert "\n" not in message
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, RwkvDeployError)


def test_world_vocab_without_every_single_byte_is_rejected(tmp_path: Path) -> None:
    vocab = tmp_path / "short_vocab.txt"
    vocab.write_text("\n".join(WORLD_VOCAB_FILE.read_text(encoding="utf-8").splitlines()[:255]) + "\n")
    with pytest.raises(TokenizerError, match=f"{vocab}: .*single-byte"):
        WorldTokenizer(vocab)


# --- Hugging Face tokenizer.json ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE (the GPT-NeoX recipe) trained here on SAMPLES: no downloads.

    Its post-processor appends <|endoftext|>, which `HFTokenizer.encode` must not do."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(SAMPLES.values()) * 3, trainer)
    tokenizer.add_tokens(["  "])  # a non-special added token, like GPT-NeoX's space runs
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos_id)]
    )
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf(hf_file: Path) -> HFTokenizer:
    return HFTokenizer(hf_file)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_hf_ids_match_the_tokenizers_library(name: str, hf: HFTokenizer, hf_file: Path) -> None:
    library = tokenizers.Tokenizer.from_file(str(hf_file))
    assert hf.encode(SAMPLES[name]) == library.encode(SAMPLES[name], add_special_tokens=False).ids


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_hf_text_round_trips(name: str, hf: HFTokenizer) -> None:
    text = SAMPLES[name]
    ids = hf.encode(text)
    assert hf.decode(ids) == text
    assert hf.decode_bytes(ids) == text.encode("utf-8")
    assert hf.encode_bytes(text.encode("utf-8")) == ids


def test_hf_decode_bytes_is_exact_per_token(hf: HFTokenizer) -> None:
    """Streaming decodes one token at a time; a token may hold part of a UTF-8 character."""
    text = SAMPLES["emoji"] + SAMPLES["chinese"]
    ids = hf.encode(text)
    assert b"".join(hf.decode_bytes([i]) for i in ids) == text.encode("utf-8")


def test_hf_interface_values(hf: HFTokenizer, hf_file: Path) -> None:
    library = tokenizers.Tokenizer.from_file(str(hf_file))
    assert isinstance(hf, Tokenizer)
    assert hf.kind == "hf"
    assert hf.vocab_size == library.get_vocab_size(with_added_tokens=True)
    assert hf.eos_token_id == library.token_to_id("<|endoftext|>")
    assert hf.eos_token_id not in hf.encode("hi")
    assert hf.decode([*hf.encode("hi"), hf.eos_token_id]) == "hi"
    assert hf.decode_bytes([*hf.encode("hi"), hf.eos_token_id]) == b"hi"
    assert hf.files() == [hf_file]


def test_hf_rejects_what_it_cannot_do(hf: HFTokenizer) -> None:
    with pytest.raises(NotImplementedError, match="not UTF-8"):
        hf.encode_bytes(b"\xff\xfe")
    with pytest.raises(TokenizerError, match=str(hf.vocab_size)):
        hf.decode([hf.vocab_size])  # the library alone would silently drop it
    with pytest.raises(TokenizerError, match="eos token"):
        HFTokenizer(hf.path, eos_token="<no such token>")


def test_hf_without_byte_level_decoder_falls_back_to_text(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "\u00e9t\u00e9": 3}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    word_level = HFTokenizer(tmp_path)  # a folder holding tokenizer.json works too
    ids = word_level.encode("hello été")
    assert ids == [1, 3]
    assert word_level.decode_bytes(ids) == word_level.decode(ids).encode("utf-8")
    assert word_level.eos_token_id is None


def test_hf_file_that_is_not_a_tokenizer_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("not json")
    with pytest.raises(TokenizerError, match=f"^{path}: not a Hugging Face tokenizer.json: [^\n]*$"):
        HFTokenizer(path)


# --- Bytes -------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_all_256_values() -> None:
    tokenizer = ByteTokenizer()
    data = bytes(range(256))
    assert tokenizer.encode_bytes(data) == list(range(256))
    assert tokenizer.decode_bytes(tokenizer.encode_bytes(data)) == data
    assert tokenizer.encode("é") == [0xC3, 0xA9]
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.eos_token_id, tokenizer.files()) == ("bytes", 256, None, [])
    with pytest.raises(TokenizerError, match="0..255"):
        tokenizer.decode_bytes([256])


# --- load_tokenizer ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cls"), [("world", WorldTokenizer), ("hf", HFTokenizer), ("bytes", ByteTokenizer)])
def test_load_tokenizer_builds_each_kind(kind: str, cls: type[Tokenizer], hf_file: Path) -> None:
    tokenizer = load_tokenizer(kind, str(hf_file) if kind == "hf" else None)
    assert type(tokenizer) is cls and tokenizer.kind == kind


@pytest.mark.parametrize(
    ("kind", "path", "expected"),
    [
        ("sentencepiece", None, "unknown tokenizer kind 'sentencepiece'; expected one of world, hf, bytes"),
        ("world", "/nonexistent/vocab.txt", "World vocab file not found: /nonexistent/vocab.txt"),
        ("hf", "/nonexistent/tokenizer.json", "tokenizer.json not found: /nonexistent/tokenizer.json"),
        ("hf", None, "tokenizer kind 'hf' needs the path of a tokenizer.json"),
        ("bytes", "/some/file", "tokenizer kind 'bytes' takes no file, got /some/file"),
    ],
)
def test_load_tokenizer_errors_are_clear_value_errors(kind: str, path: str | None, expected: str) -> None:
    with pytest.raises(ValueError) as raised:
        load_tokenizer(kind, path)
    assert str(raised.value) == expected
