"""rwkv.cpp `.bin` reader: format parsing, inverse transforms, and logits through BlinkDL's `rwkv` package.

Uses rwkv.cpp's own tiny test models and expected logits from ../shared/reference/rwkvcpp (see its
README: §3 format, §4 test protocol, §5 v5 eps caveat, §6 inverse transforms, §7 verification).
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from rwkv_deploy.errors import CheckpointError
from rwkv_deploy.models.detect import detect_version
from rwkv_deploy.models.checkpoint.rwkvcpp import (
    dequantize_q4_0,
    dequantize_q4_1,
    dequantize_q5_0,
    dequantize_q5_1,
    dequantize_q8_0,
    is_rwkvcpp_file,
    read_rwkvcpp,
    read_rwkvcpp_raw,
)

REF_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "rwkvcpp"
if not REF_DIR.is_dir():
    pytest.skip(f"rwkv.cpp reference files not found at {REF_DIR}", allow_module_level=True)

PROMPT = [34, 105, 110]  # the bytes of '"in' (README §4)
MODELS = ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"]
PACKAGE_CHECKED = ["4v0-660K", "6v0-1m", "7v0-834K"]  # v5 needs ln_x eps 1e-5, which the package lacks (§5)


def model_file(tag: str, fmt: str = "FP32") -> Path:
    return REF_DIR / f"tiny-rwkv-{tag}-{fmt}.bin"


# --------------------------------------------------------------------------------------------------
# Expected BlinkDL structure (docs/rwkv-math.md §2.1, §9.2; README §2 model shapes)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    version: str
    C: int
    L: int
    F: int
    H: int = 1
    d_mix: int = 0
    d_decay: int = 0
    d_lora: int = 0
    V: int = 256

    @property
    def N(self) -> int:
        return self.C // self.H


DIMS = {
    "4v0-660K": Dims("4", C=128, L=4, F=256),
    "5v1-730K": Dims("5.0", C=64, L=12, F=256, H=8),
    "5v2-730K": Dims("5.2", C=64, L=12, F=256, H=8),
    "6v0-1m": Dims("6", C=64, L=12, F=224, H=8, d_mix=32, d_decay=64),
    "7v0-834K": Dims("7", C=64, L=12, F=256, H=1, d_lora=32),
}


DIMS_BY_VERSION = {d.version: d for d in DIMS.values()}


def _attention_shapes(d: Dims, layer: int) -> dict[str, tuple[int, ...]]:
    C, H, N, mix = d.C, d.H, d.N, (1, 1, d.C)
    sq = {f"{w}.weight": (C, C) for w in ("key", "value", "receptance", "output")}
    if d.version == "4":
        return {**sq, "time_decay": (C,), "time_first": (C,), **{f"time_mix_{c}": mix for c in "kvr"}}
    ln_x = {"ln_x.weight": (C,), "ln_x.bias": (C,)}
    if d.version == "5.0":
        return {**sq, **ln_x, "time_decay": (H,), "time_first": (H,), **{f"time_mix_{c}": mix for c in "kvr"}}
    if d.version == "5.2":
        mixes = {f"time_mix_{c}": mix for c in "kvrg"}
        return {**sq, **ln_x, **mixes, "gate.weight": (C, C), "time_decay": (H, N), "time_faaaa": (H, N)}
    if d.version == "6":
        return {
            **sq, **ln_x, "gate.weight": (C, C), **{f"time_maa_{c}": mix for c in "xwkvrg"},
            "time_maa_w1": (C, 5 * d.d_mix), "time_maa_w2": (5, d.d_mix, C),
            "time_decay": mix, "time_decay_w1": (C, d.d_decay), "time_decay_w2": (d.d_decay, C),
            "time_faaaa": (H, N),
        }
    loras = "wavg" if layer > 0 else "wag"  # rwkv.cpp's v7 file has no layer-0 v0/v1/v2 (README §6)
    out = {**sq, **ln_x, **{f"x_{c}": mix for c in "rwkvag"}, "k_k": mix, "k_a": mix, "r_k": (H, N)}
    for m in loras:
        out |= {f"{m}1": (C, d.d_lora), f"{m}2": (d.d_lora, C)}
        if m != "g":
            out[f"{m}0"] = mix
    return out


def _ffn_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    C, F = d.C, d.F
    if d.version == "7":
        return {"x_k": (1, 1, C), "key.weight": (F, C), "value.weight": (C, F)}
    mix = {f"time_{'maa' if d.version == '6' else 'mix'}_{c}": (1, 1, C) for c in "kr"}
    return {**mix, "key.weight": (F, C), "value.weight": (C, F), "receptance.weight": (C, C)}


def expected_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    """Every BlinkDL key and shape of a model with these dims."""
    out = {"emb.weight": (d.V, d.C), "head.weight": (d.V, d.C), "ln_out.weight": (d.C,), "ln_out.bias": (d.C,)}
    out |= {"blocks.0.ln0.weight": (d.C,), "blocks.0.ln0.bias": (d.C,)}
    for i in range(d.L):
        out |= {f"blocks.{i}.{ln}.{p}": (d.C,) for ln in ("ln1", "ln2") for p in ("weight", "bias")}
        out |= {f"blocks.{i}.att.{k}": s for k, s in _attention_shapes(d, i).items()}
        out |= {f"blocks.{i}.ffn.{k}": s for k, s in _ffn_shapes(d).items()}
    return out


@pytest.fixture(scope="module")
def fp32_dicts() -> dict[str, dict[str, torch.Tensor]]:
    return {tag: read_rwkvcpp(model_file(tag)) for tag in MODELS}


@pytest.mark.parametrize("tag", MODELS)
def test_keys_shapes_and_version(tag: str, fp32_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    sd = fp32_dicts[tag]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == expected_shapes(DIMS[tag])
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    assert detect_version(sd) == DIMS[tag].version  # BlinkDL-named version, also from the converted keys


# --------------------------------------------------------------------------------------------------
# Round trip: re-applying rwkv.cpp's forward transforms gives every stored tensor back bit-exactly (§7)
# --------------------------------------------------------------------------------------------------


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64)


def reconvert(version: str, sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """rwkv.cpp's converter, written from README §6 independently of the reader's inverse transforms."""
    out: dict[str, np.ndarray] = {}
    for name, t in sd.items():
        a, short = _f64(t), name.split(".", 2)[-1]
        if version == "7" and short.startswith("att.x_") and short[-1] in "rwkvag":
            if short.endswith("x_r"):
                prefix = name[: -len("x_r")]
                rows = [_f64(sd[prefix + f"x_{c}"]).reshape(1, 1, -1) for c in "rwkvag"]
                out[prefix + "x_rwkvag"] = np.concatenate(rows, axis=0).astype(np.float32)
            continue
        if version == "4" and short == "att.time_decay":
            a = -np.exp(a)
        elif version in ("5.0", "5.2") and short == "att.time_decay":
            a = np.exp(-np.exp(a))
        elif version == "5.0" and short == "att.time_first":
            a = np.exp(a)
        if version == "6" and short in ("att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2"):
            a = np.swapaxes(a, -1, -2)
        if version == "7" and short[:-1] in ("att.w", "att.a", "att.v", "att.g") and short[-1] in "12":
            a = a.T
        if ".time_" in name:
            a = a.squeeze()
            if version in ("5.0", "5.2", "6") and short in ("att.time_decay", "att.time_first", "att.time_faaaa"):
                a = a.reshape(DIMS_BY_VERSION[version].H, -1, 1)
        out[name] = a.astype(np.float32)
    return out


@pytest.mark.parametrize("tag", MODELS)
def test_inverse_transforms_round_trip_bit_exactly(tag: str, fp32_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    _, stored = read_rwkvcpp_raw(model_file(tag))
    again = reconvert(DIMS[tag].version, fp32_dicts[tag])
    assert again.keys() == stored.keys()
    for name, raw in stored.items():
        assert again[name].shape == raw.shape, name
        assert np.array_equal(again[name].view(np.uint32), raw.view(np.uint32)), name


# --------------------------------------------------------------------------------------------------
# Logits through BlinkDL's rwkv package (one subprocess per model: it picks its class at import time)
# --------------------------------------------------------------------------------------------------

PACKAGE_SCRIPT = """
import gc, sys
import numpy as np, torch
from rwkv.model import RWKV
base, result, mode = sys.argv[1:4]
torch.load(base + ".pth")  # speed only: import what loading needs, then exempt it all from the
gc.freeze()                # package's 14 gc.collect() calls (~3 s otherwise)
model = RWKV(model=base, strategy="cpu fp32")
n_head = getattr(model, "n_head", getattr(model.args, "n_head", 0))  # v7 class / v5-v6 class / v4
out = {"version": float(getattr(model, "version", 7)), "n_head": int(n_head)}
if mode == "logits":
    tokens = [int(t) for t in sys.argv[4].split(",")]
    state = None
    for t in tokens:
        logits, state = model.forward([t], state)
    out["serial"] = logits.float().numpy()
    out["seq"] = model.forward(tokens, None)[0].float().numpy()
np.savez(result, **out)
"""


def _start_package(tag: str, sd: dict[str, torch.Tensor], workdir: Path) -> subprocess.Popen[bytes]:
    """Launch BlinkDL's package on one converted model; "detect" mode for v5 skips the forward pass."""
    base = workdir / "model"  # the package appends ".pth" (v7 always, v4-v6 when it is missing)
    torch.save(sd, base.with_suffix(".pth"))
    # One thread each: tiny matmuls are slower multi-threaded, and several runs go at once.
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env = {**os.environ, **threads, "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("RWKV_V7_ON", None)
    if DIMS[tag].version == "7":
        env["RWKV_V7_ON"] = "1"
    mode = "logits" if tag in PACKAGE_CHECKED else "detect"
    args = [sys.executable, "-c", PACKAGE_SCRIPT, str(base), str(workdir / "out.npz"), mode, ",".join(map(str, PROMPT))]
    with open(workdir / "stderr.txt", "wb") as stderr:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


@pytest.fixture(scope="module")
def package_results(
    fp32_dicts: dict[str, dict[str, torch.Tensor]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, np.ndarray] | str]:
    """Run all models through the package at once (each run is mostly import and load time)."""
    pytest.importorskip("rwkv")
    workdirs = {tag: tmp_path_factory.mktemp(f"rwkv-pip-{tag}") for tag in MODELS}
    procs = {tag: _start_package(tag, fp32_dicts[tag], workdirs[tag]) for tag in MODELS}
    results: dict[str, dict[str, np.ndarray] | str] = {}
    for tag, proc in procs.items():
        if proc.wait(timeout=300) != 0:
            results[tag] = (workdirs[tag] / "stderr.txt").read_text(errors="replace")[-3000:]
            continue
        with np.load(workdirs[tag] / "out.npz") as z:
            results[tag] = {k: z[k] for k in z.files}
    return results


def package_result(results: dict[str, dict[str, np.ndarray] | str], tag: str) -> dict[str, np.ndarray]:
    out = results[tag]
    if isinstance(out, str):
        pytest.fail(f"rwkv package failed on {tag}:\n{out}")
    return out


def signed_sum(logits: np.ndarray, expected: np.ndarray) -> float:
    """README §4: Σ (logits − expected), accumulated in float32 in index order."""
    diff = logits.astype(np.float32) - expected.astype(np.float32)
    return float(np.cumsum(diff, dtype=np.float32)[-1])


@pytest.mark.parametrize("tag", PACKAGE_CHECKED)
def test_package_logits_match_rwkvcpp(tag: str, package_results: dict[str, dict[str, np.ndarray] | str]) -> None:
    """README §4 protocol: signed sum within 1.05 × 0.001, plus max |diff| ≤ 1e-5 (sums can cancel)."""
    expected = np.fromfile(REF_DIR / f"expected-logits-{tag}.bin", dtype="<f4")
    assert expected.shape == (256,)
    out = package_result(package_results, tag)
    assert float(out["version"]) == float(DIMS[tag].version)
    for mode in ("serial", "seq"):
        logits = out[mode]
        max_abs = float(np.abs(logits - expected).max())
        print(f"{tag} {mode}: max|diff| {max_abs:.3g}, signed sum {signed_sum(logits, expected):.3g}")
        assert abs(signed_sum(logits, expected)) <= 1.05 * 0.001, mode
        assert max_abs <= 1e-5, mode
        assert int(logits.argmax()) == int(expected.argmax()), mode


@pytest.mark.parametrize("tag", ["5v1-730K", "5v2-730K"])
def test_package_detects_v5_structure(tag: str, package_results: dict[str, dict[str, np.ndarray] | str]) -> None:
    """v5 logits need ln_x eps 1e-5 (README §5), which the package lacks; check only how it sees the model."""
    out = package_result(package_results, tag)
    assert float(out["version"]) == float(DIMS[tag].version)
    assert int(out["n_head"]) == DIMS[tag].H


# --------------------------------------------------------------------------------------------------
# FP16 and quantized files decode close to the FP32 file (README §3)
# --------------------------------------------------------------------------------------------------

Q5_STEP = {"Q5_0": 16, "Q5_1": 31}


def _q5_tolerance(ref: np.ndarray, step: int) -> np.ndarray:
    """Per element: 1/step of its 32-block's max magnitude, +5% for the fp16-rounded scale and offset,
    +2^-20 for scales that underflow fp16 (4v0's ~3e-7 weights, README §8)."""
    block_max = np.abs(ref.reshape(-1, 32)).max(axis=1, keepdims=True)
    return np.broadcast_to(block_max / step * 1.05 + 2.0**-20, (block_max.shape[0], 32)).reshape(ref.shape)


@pytest.mark.parametrize("fmt", ["FP16", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("tag", MODELS)
def test_low_precision_files_decode_close_to_fp32(tag: str, fmt: str) -> None:
    _, ref = read_rwkvcpp_raw(model_file(tag))
    _, low = read_rwkvcpp_raw(model_file(tag, fmt))
    assert low.keys() == ref.keys()
    approximated = 0
    for name, r in ref.items():
        got = low[name]
        assert got.shape == r.shape and got.dtype == np.float32, name
        if np.array_equal(got, r):
            continue  # stored FP32 in this file too
        approximated += 1
        if fmt == "FP16":
            assert np.array_equal(got, r.astype(np.float16).astype(np.float32)), name
        else:
            assert r.ndim >= 2, f"{name}: only matrices are quantized"
            assert np.all(np.abs(got - r) <= _q5_tolerance(r, Q5_STEP[fmt])), name
    assert approximated > 0


def test_converted_quantized_dict_matches_fp32_structure(fp32_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    q = read_rwkvcpp(model_file("6v0-1m", "Q5_1"))
    ref = fp32_dicts["6v0-1m"]
    assert {k: v.shape for k, v in q.items()} == {k: v.shape for k, v in ref.items()}
    # time_decay_w1 is quantized and transposed back: still close to the FP32 file's value
    w, w_ref = q["blocks.3.att.time_decay_w1"], ref["blocks.3.att.time_decay_w1"]
    assert not torch.equal(w, w_ref) and torch.allclose(w, w_ref, atol=float(w_ref.abs().max()) / 31 * 1.05)


# --------------------------------------------------------------------------------------------------
# Dequantizers on hand-built blocks (Q4_0, Q4_1, Q8_0 occur in no file here)
# --------------------------------------------------------------------------------------------------


def _f16_bytes(x: float) -> bytes:
    return np.float16(x).tobytes()


def _pack_nibbles(q: np.ndarray) -> bytes:
    """Element j in the low nibble of byte j, element j+16 in its high nibble."""
    return ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8).tobytes()


def _qh(q: np.ndarray) -> bytes:
    return struct.pack("<I", sum(int(b >> 4 & 1) << j for j, b in enumerate(q)))


def _scale(d: float, m: float | None = None) -> bytes:
    return _f16_bytes(d) + (b"" if m is None else _f16_bytes(m))


# name: (bits per value, block encoder (q, d, m) -> bytes, value of q per README §3, dequantizer)
BLOCK_CASES = {
    "Q4_0": (4, lambda q, d, m: _scale(d) + _pack_nibbles(q), lambda q, d, m: d * (q - 8), dequantize_q4_0),
    "Q4_1": (4, lambda q, d, m: _scale(d, m) + _pack_nibbles(q), lambda q, d, m: d * q + m, dequantize_q4_1),
    "Q5_0": (5, lambda q, d, m: _scale(d) + _qh(q) + _pack_nibbles(q), lambda q, d, m: d * (q - 16), dequantize_q5_0),
    "Q5_1": (5, lambda q, d, m: _scale(d, m) + _qh(q) + _pack_nibbles(q), lambda q, d, m: d * q + m, dequantize_q5_1),
    "Q8_0": (8, lambda q, d, m: _scale(d) + (q - 128).astype(np.int8).tobytes(), lambda q, d, m: d * (q - 128),
             dequantize_q8_0),
}


@pytest.mark.parametrize("kind", BLOCK_CASES)
def test_dequantizer_block_layout(kind: str) -> None:
    bits, encode, value, dequantize = BLOCK_CASES[kind]
    rng = np.random.default_rng(0)
    qs = [rng.integers(0, 2**bits, 32) for _ in range(3)]
    params = [(0.5, -3.0), (0.125, 1.5), (2.0, 0.25)]  # exact in fp16, so the expected values are exact
    raw = b"".join(encode(q, d, m) for q, (d, m) in zip(qs, params))
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(3, -1)
    expected = np.concatenate([value(q, d, m) for q, (d, m) in zip(qs, params)]).astype(np.float32)
    got = dequantize(blocks)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------------------------------
# Bad input: one-line CheckpointError that names the file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    name: str
    start: int  # offset of n_dims
    data_start: int
    data_end: int


_BLOCK_BYTES = {0: (1, 4), 1: (1, 2), 7: (32, 22), 8: (32, 24)}


def records(data: bytes) -> Iterator[Record]:
    """An independent walk over the tensor records, to aim the corruptions below."""
    pos = 24
    while pos < len(data):
        n_dims, name_len, code = struct.unpack_from("<3I", data, pos)
        dims = struct.unpack_from(f"<{n_dims}I", data, pos + 12)
        name_at = pos + 12 + 4 * n_dims
        per, size = _BLOCK_BYTES[code]
        end = name_at + name_len + math.prod(dims) // per * size
        yield Record(data[name_at : name_at + name_len].decode(), pos, name_at + name_len, end)
        pos = end


def corrupt_copy(tmp_path: Path, edit: Callable[[bytes], bytes], src: Path = model_file("5v2-730K")) -> Path:
    """A damaged copy of a real model file; the space in its name checks that paths are quoted as-is."""
    out = tmp_path / "broken model.bin"
    out.write_bytes(edit(src.read_bytes()))
    return out


def record_named(name: str, src: Path = model_file("5v2-730K")) -> Record:
    return next(r for r in records(src.read_bytes()) if r.name == name)


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        read_rwkvcpp(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_wrong_magic(tmp_path: Path) -> None:
    path = corrupt_copy(tmp_path, lambda d: b"GGUF" + d[4:])
    expect_error(path, "not an rwkv.cpp model file")
    assert not is_rwkvcpp_file(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    expect_error(path, "not an rwkv.cpp model file")


def test_truncated_in_the_middle_of_a_tensor(tmp_path: Path) -> None:
    data = model_file("5v2-730K").read_bytes()
    victim = next(r for r in records(data) if r.data_start > len(data) // 2 and r.data_end - r.data_start > 1000)
    cut = (victim.data_start + victim.data_end) // 2
    path = corrupt_copy(tmp_path, lambda d: d[:cut])
    expect_error(path, "truncated", repr(victim.name))


def test_unknown_dtype_code(tmp_path: Path) -> None:
    victim = record_named("blocks.3.att.key.weight")
    path = corrupt_copy(tmp_path, lambda d: d[: victim.start + 8] + struct.pack("<I", 5) + d[victim.start + 12 :])
    expect_error(path, "unknown dtype code 5", repr(victim.name))


def test_unsupported_file_version(tmp_path: Path) -> None:
    path = corrupt_copy(tmp_path, lambda d: d[:4] + struct.pack("<I", 99) + d[8:])
    expect_error(path, "unsupported rwkv.cpp file version 99")


def test_absurd_dims(tmp_path: Path) -> None:
    victim = record_named("blocks.0.att.time_mix_k")
    bad_dims = struct.pack("<I", 0x7FFF_FFFF)  # its only dim (a [64] vector)
    path = corrupt_copy(tmp_path, lambda d: d[: victim.start + 12] + bad_dims + d[victim.start + 16 :])
    expect_error(path, "absurd dims", repr(victim.name))


def test_quantized_tensor_in_version_100_file(tmp_path: Path) -> None:
    """Version 100 quantized blocks had another layout; decoding them as 101 would be silent garbage."""
    path = corrupt_copy(tmp_path, lambda d: d[:4] + struct.pack("<I", 100) + d[8:], model_file("4v0-660K", "Q5_1"))
    expect_error(path, "file version 100")


def test_is_rwkvcpp_file(tmp_path: Path) -> None:
    assert is_rwkvcpp_file(model_file("7v0-834K", "Q5_0"))
    assert not is_rwkvcpp_file(REF_DIR / "README.md")
    assert not is_rwkvcpp_file(REF_DIR)
    short = tmp_path / "short.bin"
    short.write_bytes(b"fm")
    assert not is_rwkvcpp_file(short)


def test_a_v5_1_file_is_refused_in_one_line_not_a_key_error() -> None:
    """rwkv.cpp never writes BlinkDL 5.1 (it has no path for it); such a file gets a CheckpointError."""
    from rwkv_deploy.errors import CheckpointError
    from rwkv_deploy.models.checkpoint.rwkvcpp import to_blinkdl
    from tests.helpers.random_checkpoints import make_checkpoint

    arrays = {k: v.float().numpy() for k, v in make_checkpoint("5.1", n_layer=1, n_embd=64, head_size=16,
                                                                 vocab_size=97).items()}
    with pytest.raises(CheckpointError, match="RWKV-5.1.*cannot invert"):
        to_blinkdl("fake-5v1.bin", arrays)
