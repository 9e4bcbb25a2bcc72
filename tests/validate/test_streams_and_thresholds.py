"""Token streams are reproducible and cover real text; thresholds turn metrics into pass/fail checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rwkv_deploy.tokenization import load_tokenizer
from rwkv_deploy.validate import Fp16Thresholds, Fp32Thresholds, thresholds_for
from rwkv_deploy.validate.streams import SAMPLE_TEXT, make_streams, prompt_tokens, random_stream, text_stream
from rwkv_deploy.validate.thresholds import UnknownPrecisionError, evaluate


def test_random_stream_is_reproducible_and_spans_the_vocabulary():
    a, b = random_stream(97, steps=300, batch=4, seed=0), random_stream(97, steps=300, batch=4, seed=0)
    assert a.tokens.shape == (300, 4) and a.tokens.dtype == np.int64
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, random_stream(97, 300, 4, seed=1).tokens)
    assert a.tokens.min() >= 0 and a.tokens.max() == 96


def test_text_stream_is_the_sample_text_with_each_sequence_starting_elsewhere():
    tok = load_tokenizer("bytes")
    stream = text_stream(tok, steps=40, batch=3)
    assert bytes(stream.tokens[:, 0].tolist()) == SAMPLE_TEXT.encode()[:40]
    assert len({tuple(stream.tokens[:, b]) for b in range(3)}) == 3
    # longer than the text: it wraps around
    long = text_stream(tok, steps=len(SAMPLE_TEXT.encode()) + 5, batch=1)
    assert long.tokens[-5:, 0].tolist() == long.tokens[:5, 0].tolist()


def test_sample_text_is_multilingual_and_has_code():
    assert any("\u4e00" <= ch <= "\u9fff" for ch in SAMPLE_TEXT)  # CJK
    assert any("\u0400" <= ch <= "\u04ff" for ch in SAMPLE_TEXT)  # Cyrillic
    assert "def " in SAMPLE_TEXT and "return" in SAMPLE_TEXT


def test_text_stream_only_with_a_tokenizer_and_prompts_come_from_the_stream():
    assert [s.name for s in make_streams(256, None, 8, 2, 0)] == ["random"]
    streams = make_streams(256, load_tokenizer("bytes"), 8, 2, 0)
    assert [s.name for s in streams] == ["random", "text"]
    assert prompt_tokens(streams[1], 5).tolist() == streams[1].tokens[:5].T.tolist()


def test_fp16_limits_are_looser_than_fp32_but_still_bounded():
    fp32, fp16 = thresholds_for("fp32"), thresholds_for("fp16")
    assert isinstance(fp32, Fp32Thresholds) and isinstance(fp16, Fp16Thresholds)
    assert fp32.logits_max_abs == 1e-3
    assert fp32.logits_max_abs < fp16.logits_max_abs < 1.0
    assert fp32.kl_mean < fp16.kl_mean <= 1e-3
    assert fp32.top1_min >= fp16.top1_min >= 0.98
    with pytest.raises(UnknownPrecisionError):
        thresholds_for("bf16")


def test_evaluate_applies_each_limit_in_its_direction_and_nan_never_passes():
    checks = {c.metric: c for c in evaluate("random", {
        "logits_max_abs": 5e-5, "kl_mean": math.nan, "top1_agreement": 0.5, "nonfinite_values": 0.0,
        "not_a_checked_metric": 1e9}, Fp32Thresholds())}
    assert set(checks) == {"logits_max_abs", "kl_mean", "top1_agreement", "nonfinite_values"}
    assert checks["logits_max_abs"].passed and checks["nonfinite_values"].passed
    assert not checks["kl_mean"].passed  # NaN
    assert not checks["top1_agreement"].passed and checks["top1_agreement"].op == ">="
    assert "top1_agreement [random] = 0.5" in checks["top1_agreement"].describe()
