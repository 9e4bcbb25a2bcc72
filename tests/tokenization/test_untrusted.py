"""A package's tokenizer files as untrusted input (tokenization/untrusted.py): bounds checked before anything
large is built, regexes in a safe subset, encoding under a time budget, one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import tokenizers
from tokenizers import Regex, models, pre_tokenizers
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.tokenization import HFTokenizer, TokenizerError, WorldTokenizer, untrusted
from rwkv_deploy.tokenization.untrusted import encode_within_budget, regex_problem

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
          r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
         r"""\s+(?!\S)|\s+""")


@pytest.mark.parametrize("pattern", [GPT2, LLAMA3, QWEN2, r"\s+", r"[a-z]{1,3}", r"(ab)+", r"(a|b)?", r"x{2}",
                                     r"[()|+*]+", r"\(a+\)+", r"(?:\d{1,3})"])
def test_the_patterns_real_tokenizers_use_are_in_the_safe_subset(pattern):
    assert regex_problem(pattern) is None


@pytest.mark.parametrize("pattern", [r"(a+)+", r"(a*)*b", r"(a|aa)*", r"(\w+\s?)*$", r"(?:x+y?)+", r"((a+))+",
                                     r"(.*a){20}", r"(a)\1", r"(a+){2,}"])
def test_catastrophic_shapes_and_backreferences_are_refused(pattern):
    assert regex_problem(pattern) is not None


def word_level(tmp_path: Path, size: int, split: str | None = None) -> Path:
    vocab = {f"w{i}": i for i in range(size - 1)} | {"[UNK]": size - 1}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = (pre_tokenizers.Split(Regex(split), behavior="isolated") if split
                               else pre_tokenizers.Whitespace())
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_a_tokenizer_json_with_a_backtracking_regex_is_refused_before_it_is_built(tmp_path):
    path = word_level(tmp_path, 10, split=r"(a+)+b")
    with pytest.raises(TokenizerError, match=r"pre_tokenizer.pattern regex '\(a\+\)\+b' is outside the safe subset"):
        HFTokenizer(path)


def test_a_vocabulary_larger_than_the_models_is_refused_before_it_is_built(tmp_path):
    path = word_level(tmp_path, 300)
    assert HFTokenizer(path).vocab_size == 300
    with pytest.raises(TokenizerError, match="has 300 tokens but the model's vocab_size is 256"):
        HFTokenizer(path, max_vocab=256)


def test_a_huge_tokenizer_json_is_refused_by_its_size(tmp_path, monkeypatch):
    path = word_level(tmp_path, 10)
    monkeypatch.setattr(untrusted, "MAX_HF_BYTES", path.stat().st_size - 1)
    with pytest.raises(TokenizerError, match="tokenizer.json of .* bytes, more than"):
        HFTokenizer(path)


def test_encoding_past_its_time_budget_gives_up_with_one_line(monkeypatch):
    monkeypatch.setattr(untrusted, "ENCODE_BASE_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(TokenizerError, match=r"took more than 0 s .*backtrack catastrophically"):
        encode_within_budget(lambda: time.sleep(3), 10, Path("tokenizer.json"))
    assert time.monotonic() - started < 2
    assert encode_within_budget(lambda: [1, 2], 10, Path("t")) == [1, 2]


def test_a_library_failure_or_panic_is_one_line(tmp_path):
    class PanicException(BaseException):  # what pyo3 raises for a Rust panic: not an Exception
        pass

    def panic():
        raise PanicException("called `Result::unwrap()` on an `Err` value: ...\n  stack")

    with pytest.raises(TokenizerError, match=r"^t.json: the tokenizer library panicked: called `Result::unwrap\(\)`"):
        encode_within_budget(panic, 1, Path("t.json"))


def world_vocab(tmp_path: Path, extra: list[str]) -> Path:
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)] + extra
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_world_vocab_with_a_huge_token_is_refused_before_its_literal_is_read(tmp_path):
    big = "x" * 16_000_000
    path = world_vocab(tmp_path, [f"300 '{big}' {len(big)}"])
    started = time.monotonic()
    with pytest.raises(TokenizerError, match=r"vocab.txt:257: bad World vocab line: line of 16000015 characters, "
                                             r"more than 8192"):
        WorldTokenizer(path)
    assert time.monotonic() - started < 5
    path = world_vocab(tmp_path, ["300 'ab' 2000"])
    with pytest.raises(TokenizerError, match="token of 2000 bytes, more than 1024"):
        WorldTokenizer(path)


def test_a_world_vocab_over_its_size_or_line_caps_is_refused(tmp_path, monkeypatch):
    import rwkv_deploy.tokenization.world as world

    path = world_vocab(tmp_path, [])
    monkeypatch.setattr(world, "MAX_WORLD_BYTES", 100)
    with pytest.raises(TokenizerError, match="World vocab of .* bytes, more than"):
        WorldTokenizer(path)
    monkeypatch.setattr(world, "MAX_WORLD_BYTES", 16 << 20)
    monkeypatch.setattr(world, "MAX_WORLD_LINES", 200)
    with pytest.raises(TokenizerError, match="vocab.txt:201: more than 200 tokens"):
        WorldTokenizer(path)


def test_generate_on_a_package_with_a_hostile_tokenizer_exits_2_with_one_line(tmp_path):
    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint

    checkpoint = save_checkpoint(make_checkpoint("7", n_layer=1, n_embd=64, head_size=16, vocab_size=256, seed=1),
                                 tmp_path / "m.pth")
    package = tmp_path / "pkg"
    export_package(checkpoint, package, ExportOptions(tokenizer=str(word_level(tmp_path, 200))))
    # the same tokenizer with a backtracking pre-tokenizer, listed with its true sha256 (the exporter refuses it)
    manifest = json.loads((package / "manifest.json").read_text())
    listed = package / manifest["tokenizer"]["files"][0]
    raw = json.loads(listed.read_text())
    raw["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": r"(\w+\s?)*$"}, "behavior": "Isolated",
                            "invert": False}
    listed.write_text(json.dumps(raw))
    manifest["files"][manifest["tokenizer"]["files"][0]] = hashlib.sha256(listed.read_bytes()).hexdigest()
    (package / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["generate", str(package), "--prompt", "a" * 30 + "!", "-n", "2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "outside the safe subset" in lines[0] and "tokenizer.json" in lines[0]
