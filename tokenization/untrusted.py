"""A package's tokenizer files are untrusted input: bounds checked before anything large is built.

- Sizes: a tokenizer.json at most `MAX_HF_BYTES`, a World vocab at most `MAX_WORLD_BYTES`, `MAX_WORLD_LINES`
  lines of at most `MAX_LINE_CHARS` characters, no token longer than `MAX_TOKEN_BYTES` (checked from the
  line's stated length before its literal is evaluated).
- Vocabulary: a tokenizer.json's vocab, added tokens and merges are counted from its JSON before the library
  builds anything; the vocab must fit the model's.
- Regexes: the patterns of a tokenizer.json's pre-tokenizers and normalizers must be in a safe subset: no
  backreferences, and no repeated group that itself holds an unbounded repetition or an alternation (the
  shapes of catastrophic backtracking, e.g. `(a+)+`, `(a|aa)*`). The patterns of GPT-2, Llama 3, Qwen 2 and
  the like are plain sequences of repeated classes and pass.
- Time: encoding runs in a worker thread (the library releases the GIL there) under a budget that grows with
  the text, so a pattern that still backtracks ends in a TokenizerError and SIGINT/SIGTERM are handled while
  it runs; the runaway native call is abandoned (the command exits).
- A Rust panic inside the library becomes a one-line TokenizerError.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .base import TokenizerError

MAX_HF_BYTES = 64 << 20
MAX_WORLD_BYTES = 16 << 20
MAX_WORLD_LINES = 65_535
MAX_LINE_CHARS = 8192
MAX_TOKEN_BYTES = 1024
ENCODE_BASE_SECONDS = 10.0
ENCODE_SECONDS_PER_MB = 10.0  # 100 KB/s: slower than any sane tokenizer, far faster than catastrophic backtracking

T = TypeVar("T")


def check_file_size(path: Path, limit: int, what: str) -> int:
    """The file's size, or a TokenizerError when it exceeds `limit` (checked before it is read)."""
    size = path.stat().st_size
    if size > limit:
        raise TokenizerError(f"{path}: {what} of {size} bytes, more than the {limit >> 20} MiB allowed")
    return size


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` is outside the safe subset (module docstring), or None."""
    groups: list[dict[str, bool]] = []  # per open group: holds an unbounded repetition / an alternation
    i, n, in_class = 0, len(pattern), False
    last_closed: dict[str, bool] | None = None
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 < n and (pattern[i + 1].isdigit() and pattern[i + 1] != "0" or pattern[i + 1] == "k"):
                return f"backreference at {i}"
            i += 2
            last_closed = None
            continue
        if in_class:
            in_class = c != "]"
            i += 1
            continue
        if c == "[":
            in_class, last_closed = True, None
            i += 2 if i + 1 < n and pattern[i + 1] == "]" else 1  # a leading ']' is literal
            continue
        if c == "(":
            groups.append({"unbounded": False, "alternation": False})
            last_closed = None
        elif c == ")":
            if not groups:
                return f"unbalanced ')' at {i}"
            last_closed = groups.pop()
            if groups:  # what a group holds, its parent holds
                groups[-1]["unbounded"] |= last_closed["unbounded"]
            i += 1
            continue
        elif c == "|":
            if groups:
                groups[-1]["alternation"] = True
        elif c in "*+?{":
            repeat, unbounded, end = _quantifier(pattern, i)
            if repeat and last_closed is not None and (last_closed["unbounded"] or last_closed["alternation"]):
                what = "an unbounded repetition" if last_closed["unbounded"] else "an alternation"
                return f"a repeated group that holds {what} (catastrophic backtracking) at {i}"
            if unbounded and groups:
                groups[-1]["unbounded"] = True
            if last_closed is not None and unbounded and groups:
                groups[-1]["unbounded"] = True
            i = end
            last_closed = None
            continue
        else:
            last_closed = None
        i += 1
    return None


def _quantifier(pattern: str, i: int) -> tuple[bool, bool, int]:
    """(repeats more than once, unbounded, index after it) of the quantifier at `i` (lazy/possessive suffix
    included)."""
    c = pattern[i]
    end = i + 1
    if c == "{":
        close = pattern.find("}", i)
        body = pattern[i + 1:close] if close > 0 else ""
        low, comma, high = body.partition(",")
        if close < 0 or not low.strip().isdigit() or (high.strip() and not high.strip().isdigit()):
            return False, False, i + 1  # a literal brace
        end = close + 1
        unbounded = bool(comma) and not high.strip()
        repeat = unbounded or int(high or low) > 1
    else:
        repeat, unbounded = c in "*+", c in "*+"
    if end < len(pattern) and pattern[end] in "?+":
        end += 1
    return repeat, unbounded, end


def _patterns(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every {"Regex": pattern} inside a tokenizer.json value, with where it is."""
    if isinstance(value, dict):
        if isinstance(value.get("Regex"), str):
            yield where, value["Regex"]
        for key, child in value.items():
            yield from _patterns(child, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for k, child in enumerate(value):
            yield from _patterns(child, f"{where}[{k}]")


def check_hf_json(path: Path, max_vocab: int | None) -> None:
    """Size, vocabulary and regexes of a tokenizer.json, from its JSON, before the library builds it."""
    check_file_size(path, MAX_HF_BYTES, "tokenizer.json")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json: not JSON ({str(exc)[:100]})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json: not a JSON object")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    added = data.get("added_tokens") if isinstance(data.get("added_tokens"), list) else []
    count = (len(vocab) if isinstance(vocab, (dict, list)) else 0) + len(added)
    if max_vocab is not None and count > max_vocab:
        raise TokenizerError(f"{path}: the tokenizer has {count} tokens but the model's vocab_size is {max_vocab}")
    merges = model.get("merges")
    limit = 2 * (max_vocab or 1 << 20) + 256
    if isinstance(merges, list) and len(merges) > limit:
        raise TokenizerError(f"{path}: {len(merges)} merges, more than {limit} for this vocabulary")
    for where, pattern in _patterns({k: data.get(k) for k in ("normalizer", "pre_tokenizer")}):
        if problem := regex_problem(pattern):
            raise TokenizerError(f"{path}: {where} regex {pattern[:60]!r} is outside the safe subset ({problem})")


def encode_within_budget(encode: Callable[[], T], characters: int, where: Path) -> T:
    """`encode()` in a worker thread, waited for in short slices (signals reach the main thread), at most
    ENCODE_BASE_SECONDS + ENCODE_SECONDS_PER_MB per MB of text."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, encode()))
        except BaseException as exc:  # a Rust panic is a BaseException (pyo3's PanicException)
            result.append((False, exc))

    budget = ENCODE_BASE_SECONDS + ENCODE_SECONDS_PER_MB * characters / 1e6
    worker = threading.Thread(target=run, name="tokenizer-encode", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        raise TokenizerError(f"{where}: encoding {characters} characters took more than {budget:.0f} s (the "
                             "tokenizer's regex may backtrack catastrophically); gave up")
    ok, value = result[0]
    if ok:
        return value
    raise tokenizer_failure(value, where)


def tokenizer_failure(exc: BaseException, where: Path) -> BaseException:
    """The library's exception (a bare Exception, or a Rust panic) as one line; anything else unchanged."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, TokenizerError)):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    kind = "panicked" if type(exc).__name__ == "PanicException" else "failed"
    return TokenizerError(f"{where}: the tokenizer library {kind}: {first}")


def world_line_problem(line: str) -> str | None:
    """Bounds of one World vocab line, before its literal is evaluated."""
    if len(line) > MAX_LINE_CHARS:
        return f"line of {len(line)} characters, more than {MAX_LINE_CHARS}"
    length = line.rpartition(" ")[2]
    if length.isdigit() and int(length) > MAX_TOKEN_BYTES:
        return f"token of {length} bytes, more than {MAX_TOKEN_BYTES}"
    return None

