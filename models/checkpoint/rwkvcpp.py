"""Read rwkv.cpp `.bin` (ggml) model files back into BlinkDL-format RWKV state dicts.

rwkv.cpp's converter squeezes, transposes, concatenates and pre-exponentiates some tensors; this module
undoes each of those steps (v4, v5.1 = BlinkDL "5.0", v5.2, v6, v7) so that the result loads like a
BlinkDL `.pth` checkpoint, in float32. The file layout and the inverse transforms follow rwkv.cpp's own
converter (`python/convert_pytorch_to_ggml.py` upstream) and its loader (`rwkv_model_loading.inc`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from rwkv_deploy.errors import CheckpointError

from ..detect import detect_version

MAGIC = 0x67676D66  # b"fmgg" on disk
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
FILE_VERSIONS = (100, 101)
QUANTIZED_MIN_VERSION = 101  # version 100 used an older, incompatible block layout
MAX_NAME_LEN = 4096
MAX_DIM = 1 << 31

_HEADER_WORDS = 6
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_QK = 32  # elements per quantization block


# --------------------------------------------------------------------------------------------------
# Dequantizers: raw block bytes -> float32 values. Pure and vectorised over all blocks at once.
# --------------------------------------------------------------------------------------------------


def _fp16_column(blocks: np.ndarray, start: int) -> np.ndarray:
    """The little-endian fp16 at byte `start` of every block, as a float32 column (n_blocks, 1)."""
    return np.ascontiguousarray(blocks[:, start : start + 2]).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """The 32 4-bit values of each block: low nibbles give elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)


def _fifth_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """Bit j of each block's uint32 `qh` (at byte `start`), shifted to be bit 4 of element j."""
    qh = np.ascontiguousarray(blocks[:, start : start + 4]).view("<u4").astype(np.int64)
    return (((qh >> np.arange(_QK, dtype=np.int64)) & 1) << 4).astype(np.int32)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 (18-byte blocks: d, qs[16]): value = d * (q - 8)."""
    d = _fp16_column(blocks, 0)
    return (d * (_nibbles(blocks[:, 2:18]) - 8).astype(np.float32)).reshape(-1)


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1 (20-byte blocks: d, m, qs[16]): value = d * q + m."""
    d, m = _fp16_column(blocks, 0), _fp16_column(blocks, 2)
    return (d * _nibbles(blocks[:, 4:20]).astype(np.float32) + m).reshape(-1)


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 (22-byte blocks: d, qh, qs[16]): 5-bit q = nibble | qh bit << 4, value = d * (q - 16)."""
    d = _fp16_column(blocks, 0)
    q = _nibbles(blocks[:, 6:22]) | _fifth_bits(blocks, 2)
    return (d * (q - 16).astype(np.float32)).reshape(-1)


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    """Q5_1 (24-byte blocks: d, m, qh, qs[16]): value = d * q + m with the 5-bit q of Q5_0."""
    d, m = _fp16_column(blocks, 0), _fp16_column(blocks, 2)
    q = _nibbles(blocks[:, 8:24]) | _fifth_bits(blocks, 4)
    return (d * q.astype(np.float32) + m).reshape(-1)


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 (34-byte blocks: d, int8 q[32]): value = d * q."""
    d = _fp16_column(blocks, 0)
    q = np.ascontiguousarray(blocks[:, 2:34]).view(np.int8)
    return (d * q.astype(np.float32)).reshape(-1)


@dataclass(frozen=True)
class _DType:
    """How one ggml dtype code is stored: `block_elems` values take `block_bytes` bytes."""

    name: str
    block_elems: int
    block_bytes: int
    dequantize: Callable[[np.ndarray], np.ndarray] | None  # None: plain little-endian floats

    @property
    def quantized(self) -> bool:
        return self.dequantize is not None


DTYPES: dict[int, _DType] = {
    0: _DType("FP32", 1, 4, None),
    1: _DType("FP16", 1, 2, None),
    2: _DType("Q4_0", _QK, 18, dequantize_q4_0),
    3: _DType("Q4_1", _QK, 20, dequantize_q4_1),
    7: _DType("Q5_0", _QK, 22, dequantize_q5_0),
    8: _DType("Q5_1", _QK, 24, dequantize_q5_1),
    9: _DType("Q8_0", _QK, 34, dequantize_q8_0),
}
_SUPPORTED_DTYPES = ", ".join(f"{code} {t.name}" for code, t in DTYPES.items())


# --------------------------------------------------------------------------------------------------
# Container parsing: header + tensor records -> raw float32 arrays in PyTorch shape order.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RwkvCppHeader:
    """The 24-byte file header. `data_type` is informational only; each tensor has its own dtype."""

    version: int
    n_vocab: int
    n_embed: int
    n_layer: int
    data_type: int


class _Reader:
    """A cursor over the file bytes that turns every short read into a CheckpointError naming `what`."""

    def __init__(self, path: Path, data: np.ndarray) -> None:
        self.path, self.data, self.pos = path, data, 0

    @property
    def left(self) -> int:
        return self.data.size - self.pos

    def take(self, n_bytes: int, what: str) -> np.ndarray:
        if n_bytes > self.left:
            raise CheckpointError(
                self.path, f"file is truncated in {what} (needs {n_bytes} bytes at offset {self.pos}, {self.left} left)"
            )
        chunk = self.data[self.pos : self.pos + n_bytes]
        self.pos += n_bytes
        return chunk

    def uint32s(self, count: int, what: str) -> list[int]:
        return [int(v) for v in self.take(4 * count, what).view("<u4")]


def _open_bytes(path: Path) -> np.ndarray:
    """The whole file as a read-only uint8 array; memory-mapped so big models are not copied twice."""
    try:
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))
    except OSError as exc:
        raise CheckpointError(path, f"cannot read file: {exc.strerror or exc}") from exc


def _read_header(reader: _Reader) -> RwkvCppHeader:
    """Check magic and version; every later step depends on both."""
    if reader.left < 4 or bytes(reader.data[:4]) != MAGIC_BYTES:
        raise CheckpointError(reader.path, "not an rwkv.cpp model file (bad magic)")
    _, version, n_vocab, n_embed, n_layer, data_type = reader.uint32s(_HEADER_WORDS, "the file header")
    if version not in FILE_VERSIONS:
        supported = " or ".join(map(str, FILE_VERSIONS))
        raise CheckpointError(reader.path, f"unsupported rwkv.cpp file version {version} (expected {supported})")
    if min(n_vocab, n_embed, n_layer) == 0:
        raise CheckpointError(
            reader.path, f"header has a zero size (n_vocab={n_vocab}, n_embed={n_embed}, n_layer={n_layer})"
        )
    return RwkvCppHeader(version, n_vocab, n_embed, n_layer, data_type)


def _decode(raw: np.ndarray, dtype: _DType) -> np.ndarray:
    """Raw tensor bytes -> a fresh, writable, native float32 vector."""
    if dtype.dequantize is not None:
        return dtype.dequantize(raw.reshape(-1, dtype.block_bytes))
    return raw.view("<f4" if dtype.block_bytes == 4 else "<f2").astype(np.float32)


def _read_tensor(reader: _Reader, header: RwkvCppHeader, index: int) -> tuple[str, np.ndarray]:
    """Read one tensor record; errors name the tensor once its name is known."""
    record = f"tensor record #{index} at offset {reader.pos}"
    n_dims, name_len, code = reader.uint32s(3, f"the header of {record}")
    if not 1 <= n_dims <= 3 or not 0 < name_len <= MAX_NAME_LEN:
        raise CheckpointError(reader.path, f"{record} is corrupt (n_dims={n_dims}, name length={name_len})")
    ggml_dims = reader.uint32s(n_dims, f"the dims of {record}")
    try:
        name = bytes(reader.take(name_len, f"the name of {record}")).decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(reader.path, f"{record} has a name that is not UTF-8") from None
    shape = tuple(reversed(ggml_dims))  # ggml lists the fastest-varying dim first
    if any(not 0 < d < MAX_DIM for d in shape):
        raise CheckpointError(reader.path, f"tensor {name!r} has absurd dims {list(shape)}")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise CheckpointError(
            reader.path, f"tensor {name!r} has unknown dtype code {code} (supported: {_SUPPORTED_DTYPES})"
        )
    if dtype.quantized and header.version < QUANTIZED_MIN_VERSION:
        raise CheckpointError(
            reader.path,
            f"tensor {name!r} is {dtype.name} in file version {header.version}, whose old quantized layout "
            "is not supported (re-quantize with a current rwkv.cpp)",
        )
    n_elems = math.prod(shape)
    if n_elems % dtype.block_elems:
        raise CheckpointError(
            reader.path, f"tensor {name!r} has {n_elems} elements, not a multiple of the {dtype.name} block size"
        )
    n_bytes = n_elems // dtype.block_elems * dtype.block_bytes
    if n_bytes > reader.data.size:
        raise CheckpointError(reader.path, f"tensor {name!r} has absurd dims {list(shape)} (larger than the file)")
    raw = reader.take(n_bytes, f"the data of tensor {name!r}")
    return name, _decode(raw, dtype).reshape(shape)


def _iter_tensors(reader: _Reader, header: RwkvCppHeader) -> Iterator[tuple[str, np.ndarray]]:
    """Tensor records run back to back until the end of the file."""
    index = 0
    while reader.left > 0:
        yield _read_tensor(reader, header, index)
        index += 1


def read_rwkvcpp_raw(path: str | os.PathLike[str]) -> tuple[RwkvCppHeader, dict[str, np.ndarray]]:
    """The header and every tensor exactly as stored (dequantized to float32, PyTorch shape order).

    This is rwkv.cpp's view of the model, before any inverse transform; `read_rwkvcpp` builds on it.
    """
    path = Path(path)
    reader = _Reader(path, _open_bytes(path))
    header = _read_header(reader)
    tensors: dict[str, np.ndarray] = {}
    for name, array in _iter_tensors(reader, header):
        if name in tensors:
            raise CheckpointError(path, f"tensor {name!r} appears twice")
        tensors[name] = array
    _check_header_matches(path, header, tensors)
    return header, tensors


def _check_header_matches(path: Path, header: RwkvCppHeader, tensors: dict[str, np.ndarray]) -> None:
    """The header's sizes must agree with the tensors, or the file was assembled wrongly."""
    emb = tensors.get("emb.weight")
    if emb is None:
        raise CheckpointError(path, "missing tensor 'emb.weight'")
    if emb.shape != (header.n_vocab, header.n_embed):
        raise CheckpointError(
            path,
            f"emb.weight has shape {list(emb.shape)} but the header says n_vocab={header.n_vocab}, "
            f"n_embed={header.n_embed}",
        )
    n_layer = 1 + max((int(m.group(1)) for m in map(_BLOCK_RE.match, tensors) if m), default=-1)
    if n_layer != header.n_layer:
        raise CheckpointError(path, f"file has {n_layer} layers but the header says n_layer={header.n_layer}")


# --------------------------------------------------------------------------------------------------
# Inverse transforms: rwkv.cpp tensors -> BlinkDL checkpoint tensors (README §6).
# --------------------------------------------------------------------------------------------------

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class _Ctx:
    """What the per-key transforms need: where errors point, and the model's channel/head sizes."""

    path: Path
    n_embed: int
    n_head: int


def _reshape(ctx: _Ctx, name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape, reporting a wrong element count as a bad file rather than a numpy error."""
    if array.size != math.prod(shape):
        problem = f"tensor {name!r} has shape {list(array.shape)}, expected {math.prod(shape)} elements"
        raise CheckpointError(ctx.path, problem)
    return array.reshape(shape)


def _swap_last2(ctx: _Ctx, name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    """Undo the converter's transpose of a LoRA matrix (ggml wants the other layout)."""
    if array.ndim != ndim:
        raise CheckpointError(ctx.path, f"tensor {name!r} has shape {list(array.shape)}, expected {ndim} dims")
    return np.ascontiguousarray(np.swapaxes(array, -1, -2))


def _mix(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """Token-shift mixing vectors were squeezed to [C]; BlinkDL keeps them [1,1,C]."""
    return _reshape(ctx, name, a, (1, 1, ctx.n_embed))


def _per_head(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """[H,1,1] per-head scalars -> BlinkDL's [H]."""
    return _reshape(ctx, name, a, (ctx.n_head,))


def _per_channel_hn(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """[H,N,1] per-channel values -> BlinkDL's [H,N]."""
    return _reshape(ctx, name, a, (ctx.n_head, ctx.n_embed // ctx.n_head))


def _log64(ctx: _Ctx, name: str, a: np.ndarray, what: str) -> np.ndarray:
    """log in float64 of strictly positive values; anything else means the file is not what we think."""
    a64 = a.astype(np.float64)
    if not np.all(a64 > 0):
        raise CheckpointError(ctx.path, f"tensor {name!r} has values that are not {what}")
    return np.log(a64)


def _v4_decay(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """Stored as -exp(w); recover w = log(-stored)."""
    return _log64(ctx, name, -a, "negative (v4 decay is stored as -exp(w))").astype(np.float32).reshape(-1)


def _v5_decay_values(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """Stored as exp(-exp(w)) in (0, 1); recover w = log(-log(stored)) in float64.

    A stored 1.0 (w below about -17) or 0.0 (w above about 4.6) has no finite inverse, so it is
    clamped to the nearest w that rounds back to the same float32.
    """
    a64 = a.astype(np.float64)
    if not np.all((a64 >= 0) & (a64 <= 1)):
        raise CheckpointError(ctx.path, f"tensor {name!r} has values outside [0, 1] (v5 decay is exp(-exp(w)))")
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    neg_log = np.maximum(-np.log(np.maximum(a64, tiny)), 2.0**-26)
    return np.log(neg_log).astype(np.float32)


def _v50_decay(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    return _per_head(ctx, name, _v5_decay_values(ctx, name, a))


def _v50_first(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """Stored as exp(u); recover u = log(stored), shape [H]."""
    return _per_head(ctx, name, _log64(ctx, name, a, "positive (v5.0 time_first is exp(u))").astype(np.float32))


def _v52_decay(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    return _per_channel_hn(ctx, name, _v5_decay_values(ctx, name, a))


def _lora_in_out(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """2-D LoRA matrix stored transposed -> BlinkDL's [in, out]."""
    return _swap_last2(ctx, name, a, 2)


def _v6_maa_w2(ctx: _Ctx, name: str, a: np.ndarray) -> np.ndarray:
    """v6 time_maa_w2 stored [5, C, D] -> BlinkDL's [5, D, C]."""
    return _swap_last2(ctx, name, a, 3)


Transform = Callable[[_Ctx, str, np.ndarray], np.ndarray]

_V4: dict[str, Transform] = {
    "att.time_decay": _v4_decay,
    **{f"att.time_mix_{c}": _mix for c in "kvr"},
    **{f"ffn.time_mix_{c}": _mix for c in "kr"},
}
_V50: dict[str, Transform] = {  # rwkv.cpp's "5.1"
    "att.time_decay": _v50_decay,
    "att.time_first": _v50_first,
    **{f"att.time_mix_{c}": _mix for c in "kvr"},
    **{f"ffn.time_mix_{c}": _mix for c in "kr"},
}
_V52: dict[str, Transform] = {
    "att.time_decay": _v52_decay,
    "att.time_faaaa": _per_channel_hn,
    **{f"att.time_mix_{c}": _mix for c in "kvrg"},
    **{f"ffn.time_mix_{c}": _mix for c in "kr"},
}
_V6: dict[str, Transform] = {
    "att.time_decay": _mix,  # stored raw as [H,N,1]; BlinkDL keeps [1,1,C]
    "att.time_faaaa": _per_channel_hn,
    "att.time_maa_w1": _lora_in_out,
    "att.time_maa_w2": _v6_maa_w2,
    "att.time_decay_w1": _lora_in_out,
    "att.time_decay_w2": _lora_in_out,
    **{f"att.time_maa_{c}": _mix for c in "xwkvrg"},
    **{f"ffn.time_maa_{c}": _mix for c in "kr"},
}
_V7: dict[str, Transform] = {f"att.{m}{i}": _lora_in_out for m in "wavg" for i in "12"}
_TRANSFORMS: dict[str, dict[str, Transform]] = {"4": _V4, "5.0": _V50, "5.2": _V52, "6": _V6, "7": _V7}

V7_MIX_ORDER = ("r", "w", "k", "v", "a", "g")  # the order of x_rwkvag's six rows


def _split_x_rwkvag(ctx: _Ctx, name: str, a: np.ndarray) -> Arrays:
    """v7's concatenated [6,1,C] mixing vectors -> att.x_r, x_w, x_k, x_v, x_a, x_g, each [1,1,C]."""
    rows = _reshape(ctx, name, a, (len(V7_MIX_ORDER), 1, 1, ctx.n_embed))
    prefix = name[: -len("x_rwkvag")]
    return {f"{prefix}x_{c}": np.ascontiguousarray(rows[i]) for i, c in enumerate(V7_MIX_ORDER)}


def _head_count(path: Path, version: str, tensors: Arrays) -> int:
    """H per README §6: time_decay's first dim (v5/v6), r_k's first dim (v7); v4 has no heads."""
    key = {"4": None, "7": "blocks.0.att.r_k"}.get(version, "blocks.0.att.time_decay")
    if key is None:
        return 1
    if key not in tensors:
        raise CheckpointError(path, f"missing tensor {key!r}")
    n_head = tensors[key].shape[0]
    n_embed = tensors["emb.weight"].shape[1]
    if n_embed % n_head:
        raise CheckpointError(path, f"{key} gives {n_head} heads, which does not divide n_embed={n_embed}")
    return n_head


def to_blinkdl(path: str | os.PathLike[str], tensors: Arrays) -> tuple[str, Arrays]:
    """Apply the inverse transforms for the detected version; returns (version, BlinkDL arrays)."""
    path = Path(path)
    version = detect_version(tensors, path)  # the stored keys and shapes read like BlinkDL ones
    if version not in _TRANSFORMS:  # detect_version read BlinkDL 5.1, which rwkv.cpp has no conversion path for
        raise CheckpointError(path, f"rwkv.cpp file of RWKV-{version}, which rwkv.cpp's converter does not produce "
                              f"and this reader cannot invert (supported: {', '.join(_TRANSFORMS)})")
    ctx = _Ctx(path, n_embed=tensors["emb.weight"].shape[1], n_head=_head_count(path, version, tensors))
    table = _TRANSFORMS[version]
    out: Arrays = {}
    for name, array in tensors.items():
        match = _BLOCK_RE.match(name)
        suffix = match.group(2) if match else name
        if version == "7" and suffix == "att.x_rwkvag":
            out.update(_split_x_rwkvag(ctx, name, array))
        elif suffix in table:
            out[name] = table[suffix](ctx, name, array)
        else:
            out[name] = array
    return version, out


def read_rwkvcpp(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an rwkv.cpp `.bin` model as a BlinkDL-format float32 state dict (v4 to v7).

    Quantized and fp16 tensors are dequantized; the result loads like a BlinkDL `.pth` checkpoint.
    """
    _, tensors = read_rwkvcpp_raw(path)
    _, arrays = to_blinkdl(path, tensors)
    return {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in arrays.items()}


def is_rwkvcpp_file(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a regular file that starts with rwkv.cpp's magic; cheap enough to sniff formats."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == MAGIC_BYTES
