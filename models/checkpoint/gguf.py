"""Read llama.cpp GGUF files of RWKV-6 (`rwkv6`) and RWKV-7 (`rwkv7`) back into BlinkDL-format state dicts.

Three parts, kept apart so that loading can be made lazy (notes: lazy-contract):
1. `read_gguf_table`: the header, metadata and tensor table, parsed without reading any tensor data, with every
   count, length, dimension and offset checked against bounds and the file size (a GGUF file is untrusted).
2. `load_gguf_tensor`: one tensor's bytes, read with a plain file read at its offset and dequantized to float32 by
   the `gguf` library (F32, F16, BF16, Q4_0 ... Q8_0, the K-quants and whatever else `gguf.quants` decodes).
3. `gguf_to_blinkdl`: GGUF names and layouts -> BlinkDL names and layouts, undoing llama.cpp's converter
   (`conversion/rwkv.py` in llama.cpp): un-fusing `time_mix_lerp_fused`, transposing the LoRA matrices back,
   dropping layer 0's dummy `time_mix_v*` (copies of `time_mix_a*`), un-flattening `r_k`, and for RWKV-6 undoing
   the rescale baked into `time_mix_output` / `channel_mix_value` (divided by 2^(layer // rescale_every)).
   docs/rwkv-math.md, "GGUF", has the table.

Orientation: GGUF lists a tensor's dims fastest-varying first (ggml's ne[0] is the row length), so the numpy
shape is the reversed list; a torch Linear weight [out, in] is stored as ne = [in, out] and comes back as [out, in].
The table is parsed here rather than with `gguf.GGUFReader`, which memory-maps the whole file and walks any array
length it is given in Python: a hostile count would hang it.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np
import torch

from rwkv_deploy.errors import CheckpointError

from .lazy import LazyTensor

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 used 32-bit counts; v2 and v3 share this layout (v3 added big-endian files, refused)
ARCHITECTURES = ("rwkv6", "rwkv7")
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = 1 << 40
MAX_TENSORS = 1 << 16  # a 14B RWKV has about 1,000
MAX_KV = 1 << 16
MAX_METADATA_BYTES = 64 << 20  # header + metadata + tensor table; a 256k-token vocabulary takes ~10 MiB
DEFAULT_ALIGNMENT = 32
_CHUNK = 1 << 20

# GGUF metadata value types: code -> (struct format, size); 8 string, 9 array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor-table entry: `shape` in numpy order (ggml's ne reversed), `offset` absolute in the file."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    type_code: int
    offset: int
    n_bytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFTable:
    """Everything a GGUF file says before its tensor data."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor] = field(repr=False)

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]


# --------------------------------------------------------------------------------------------------
# 1. The table: a bounded cursor over the file's first bytes
# --------------------------------------------------------------------------------------------------


class _Cursor:
    """Reads the header in chunks as needed; every read past the file or the metadata cap is a CheckpointError."""

    def __init__(self, path: Path, f: Any, file_size: int) -> None:
        self.path, self.f, self.file_size = path, f, file_size
        self.buf = bytearray()
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > self.file_size:
            raise CheckpointError(self.path, f"truncated GGUF file: {what} needs {n:,} bytes at offset {self.pos:,}, "
                                             f"the file has {self.file_size:,}")
        if end > MAX_METADATA_BYTES:
            raise CheckpointError(self.path, f"GGUF metadata larger than {MAX_METADATA_BYTES >> 20} MiB ({what} at "
                                             f"offset {self.pos:,}); not a model file we read")
        while len(self.buf) < end:
            chunk = self.f.read(max(_CHUNK, end - len(self.buf)))
            if not chunk:
                raise CheckpointError(self.path, f"truncated GGUF file while reading {what}")
            self.buf += chunk

    def take(self, n: int, what: str) -> memoryview:
        self._need(n, what)
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, code: int, what: str) -> Any:
        fmt, size = _SCALARS[code]
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def string(self, what: str) -> str:
        length = self.u64(f"the length of {what}")
        if length > self.file_size - self.pos:
            raise CheckpointError(self.path, f"truncated GGUF file: {what} declares {length:,} bytes, beyond its end")
        return bytes(self.take(length, what)).decode("utf-8", errors="replace")

    def value(self, code: int, what: str) -> Any:
        if code in _SCALARS:
            return self.scalar(code, what)
        if code == _STRING:
            return self.string(what)
        if code != _ARRAY:
            raise CheckpointError(self.path, f"{what} has unknown GGUF value type {code}")
        item = self.u32(f"the item type of {what}")
        count = self.u64(f"the length of {what}")
        smallest = {_STRING: 8}.get(item, _SCALARS.get(item, (None, 0))[1])
        if not smallest:
            raise CheckpointError(self.path, f"{what} is an array of GGUF value type {item}, which we do not read")
        if count * smallest > self.file_size - self.pos:
            raise CheckpointError(self.path, f"{what} declares {count:,} items, more than the file can hold")
        if item == _STRING:
            return [self.string(f"{what}[{i}]") for i in range(count)]
        fmt, size = _SCALARS[item]
        return np.frombuffer(self.take(count * size, what), dtype=np.dtype(fmt)).tolist()


def _quant_types() -> dict[int, tuple[str, int, int]]:
    """GGML type code -> (name, values per block, bytes per block) for every type `gguf` dequantizes."""
    import gguf.quants
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    # gguf.quants.dequantize handles F32, F16 and the types registered in its (private) table of decoders
    readable = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *getattr(gguf.quants, "_type_traits", {})}
    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in readable if t in GGML_QUANT_SIZES}


def _tensor_entry(cur: _Cursor, index: int,
                  types: dict[int, tuple[str, int, int]]) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"the name of tensor #{index}")
    n_dims = cur.u32(f"the dimension count of tensor {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise CheckpointError(cur.path, f"GGUF tensor {name!r} declares {n_dims} dimensions "
                                        f"(GGUF allows 1 to {MAX_DIMS})")
    ne = [cur.u64(f"the dims of tensor {name!r}") for _ in range(n_dims)]
    if any(not 0 < d < MAX_DIM for d in ne):
        raise CheckpointError(cur.path, f"GGUF tensor {name!r} has absurd dims {ne}")
    code = cur.u32(f"the type of tensor {name!r}")
    if code not in types:
        raise CheckpointError(cur.path, f"GGUF tensor {name!r} has type code {code}, which we cannot dequantize "
                                        f"(we read {', '.join(sorted(n for n, _, _ in types.values()))})")
    offset = cur.u64(f"the offset of tensor {name!r}")
    return name, tuple(reversed(ne)), code, offset


def read_gguf_table(path: str | os.PathLike[str]) -> GGUFTable:
    """Parse the header, metadata and tensor table; no tensor data is read. Refuses non-RWKV architectures."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            cur = _Cursor(path, f, file_size)
            if file_size < 4 or bytes(cur.take(4, "the magic")) != MAGIC:
                raise CheckpointError(path, "not a GGUF file (bad magic)")
            version = cur.u32("the version")
            if version not in VERSIONS:
                hint = " (a big-endian file?)" if version >= 1 << 16 else ""
                raise CheckpointError(path, f"unsupported GGUF version {version}{hint}; we read versions 2 and 3")
            n_tensors, n_kv = cur.u64("the tensor count"), cur.u64("the metadata count")
            if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
                raise CheckpointError(path, f"GGUF header declares {n_tensors:,} tensors and {n_kv:,} metadata "
                                            f"entries (at most {MAX_TENSORS:,} and {MAX_KV:,}); not a model file "
                                            "we read")
            metadata: dict[str, Any] = {}
            for i in range(n_kv):
                key = cur.string(f"metadata key #{i}")
                metadata[key] = cur.value(cur.u32(f"the type of metadata {key!r}"), f"metadata {key!r}")
            _check_architecture(path, metadata)
            types = _quant_types()
            entries = [_tensor_entry(cur, i, types) for i in range(n_tensors)]
            header_end = cur.pos
    except OSError as exc:
        raise CheckpointError(path, f"cannot read ({exc.strerror or exc})") from None
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(path, f"GGUF general.alignment {alignment!r} is not a power of two")
    data_start = -(-header_end // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, code, offset in entries:
        type_name, block, block_bytes = types[code]
        if shape[-1] % block:
            raise CheckpointError(path, f"GGUF tensor {name!r} has rows of {shape[-1]} values, not a multiple of "
                                        f"the {type_name} block of {block}")
        n_bytes = math.prod(shape) // block * block_bytes
        start = data_start + offset
        if offset % alignment or start + n_bytes > file_size:
            raise CheckpointError(path, f"GGUF tensor {name!r} lies outside the file (offset {offset:,}, "
                                        f"{n_bytes:,} bytes, data section of {max(file_size - data_start, 0):,})")
        if name in tensors:
            raise CheckpointError(path, f"GGUF tensor {name!r} appears twice")
        tensors[name] = GGUFTensor(name, shape, type_name, code, start, n_bytes)
    return GGUFTable(path, version, metadata, tensors)


def _check_architecture(path: Path, metadata: dict[str, Any]) -> None:
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(path, "GGUF file without general.architecture; not a model file")
    if arch not in ARCHITECTURES:
        raise CheckpointError(path, f"GGUF architecture {arch[:40]} is not an RWKV model we read; rwkv6 and rwkv7 are")


# --------------------------------------------------------------------------------------------------
# 2. One tensor's data
# --------------------------------------------------------------------------------------------------


def load_gguf_tensor(path: str | os.PathLike[str], info: GGUFTensor) -> torch.Tensor:
    """Read one tensor's bytes at its offset and dequantize them: float32, in numpy shape order."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = np.empty(info.n_bytes, dtype=np.uint8)
    try:
        with open(path, "rb") as f:
            f.seek(info.offset)
            got = f.readinto(memoryview(raw))
    except OSError as exc:
        raise CheckpointError(path, f"cannot read tensor {info.name!r} ({exc.strerror or exc})") from None
    if got != info.n_bytes:
        raise CheckpointError(path, f"truncated GGUF file: tensor {info.name!r} has {got:,} of {info.n_bytes:,} bytes")
    rows = raw.reshape(*info.shape[:-1], -1)
    values = dequantize(rows, GGMLQuantizationType(info.type_code))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape))


def type_summary(table: GGUFTable) -> str:
    """What `inspect` shows as the stored dtype: the type holding most values first, then the tensor counts."""
    values: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for t in table.tensors.values():
        values[t.type_name] += t.numel
        counts[t.type_name] += 1
    dominant = values.most_common(1)[0][0] if values else "empty"
    detail = ", ".join(f"{name} {counts[name]}" for name, _ in values.most_common())
    return f"GGUF {dominant} ({detail} tensors)"


# --------------------------------------------------------------------------------------------------
# 3. GGUF names -> BlinkDL names (lazy-contract: values touched only by shape, reshape, transpose(0, 1),
#    first-axis indexing and multiplication by a Python float)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFModelInfo:
    """The metadata the key map needs."""

    architecture: str
    n_embd: int
    head_size: int
    rescale_every: int  # RWKV-6: layers per halving baked into the weights; 0 = none


def model_info(table: GGUFTable) -> GGUFModelInfo:
    arch, meta = table.architecture, table.metadata

    def positive(key: str) -> int:
        value = meta.get(f"{arch}.{key}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(table.path, f"GGUF metadata {arch}.{key} is {value!r}; expected a positive integer")
        return value

    n_embd, head_size = positive("embedding_length"), positive("wkv.head_size")
    if n_embd % head_size:
        raise CheckpointError(table.path, f"GGUF head size {head_size} does not divide the width {n_embd}")
    rescale = meta.get(f"{arch}.rescale_every_n_layers", 0) if arch == "rwkv6" else 0
    if not isinstance(rescale, int) or rescale < 0:
        raise CheckpointError(table.path, f"GGUF metadata {arch}.rescale_every_n_layers is {rescale!r}")
    return GGUFModelInfo(arch, n_embd, head_size, rescale)


T = TypeVar("T")

_TOP = {"token_embd.weight": "emb.weight", "output.weight": "head.weight",
        "token_embd_norm.weight": "blocks.0.ln0.weight", "token_embd_norm.bias": "blocks.0.ln0.bias",
        "output_norm.weight": "ln_out.weight", "output_norm.bias": "ln_out.bias"}
_COMMON = {"attn_norm.weight": "ln1.weight", "attn_norm.bias": "ln1.bias",
           "attn_norm_2.weight": "ln2.weight", "attn_norm_2.bias": "ln2.bias",
           "time_mix_ln.weight": "att.ln_x.weight", "time_mix_ln.bias": "att.ln_x.bias",
           **{f"time_mix_{m}.weight": f"att.{m}.weight" for m in ("receptance", "key", "value", "output", "gate")},
           **{f"channel_mix_{m}.weight": f"ffn.{m}.weight" for m in ("key", "value", "receptance")}}
V7_LERP_ORDER = ("r", "w", "k", "v", "a", "g")  # rows of time_mix_lerp_fused
V6_LERP_ORDER = ("w", "k", "v", "r", "g")
_V7_VECTORS = {"time_mix_w0.weight": "att.w0", "time_mix_a0.weight": "att.a0", "time_mix_v0.weight": "att.v0",
               "time_mix_k_k.weight": "att.k_k", "time_mix_k_a.weight": "att.k_a",
               "channel_mix_lerp_k.weight": "ffn.x_k"}
_V7_LORA = {f"time_mix_{m}{i}.weight": f"att.{m}{i}" for m in "wavg" for i in "12"}
_V6_VECTORS = {"time_mix_lerp_x.weight": "att.time_maa_x", "time_mix_decay.weight": "att.time_decay",
               **{f"time_mix_lerp_{c}.weight": f"att.time_maa_{c}" for c in V6_LERP_ORDER},
               "channel_mix_lerp_k.weight": "ffn.time_maa_k", "channel_mix_lerp_r.weight": "ffn.time_maa_r"}
_V6_LORA = {"time_mix_w1.weight": "att.time_maa_w1", "time_mix_decay_w1.weight": "att.time_decay_w1",
            "time_mix_decay_w2.weight": "att.time_decay_w2"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_to_blinkdl(tensors: Mapping[str, T], info: GGUFModelInfo, path: str | os.PathLike[str]) -> dict[str, T]:
    """GGUF-named tensors (numpy shape order) -> BlinkDL `.pth` names and shapes."""
    c, n = info.n_embd, info.head_size
    out: dict[str, Any] = {}
    for name, t in tensors.items():
        if name in _TOP:
            out[_TOP[name]] = t
            continue
        match = _BLOCK.match(name)
        if not match:
            raise CheckpointError(path, f"GGUF tensor {name!r} is not part of an {info.architecture} model")
        layer, suffix = int(match.group(1)), match.group(2)
        blk = f"blocks.{layer}."
        if suffix in _COMMON:
            key = blk + _COMMON[suffix]
            rescaled = info.rescale_every and suffix in ("time_mix_output.weight", "channel_mix_value.weight")
            scale = 2.0 ** (layer // info.rescale_every) if rescaled else 1.0
            out[key] = t * scale if scale != 1.0 else t
        elif suffix == "time_mix_lerp_fused.weight":
            order = V7_LERP_ORDER if info.architecture == "rwkv7" else V6_LERP_ORDER
            if t.shape[0] != len(order):
                raise CheckpointError(path, f"GGUF tensor {name!r} has shape {list(t.shape)}; expected "
                                            f"{len(order)} stacked token-shift vectors")
            prefix = "att.x_" if info.architecture == "rwkv7" else "att.time_maa_"
            out.update({blk + prefix + m: _reshape(t[i], (1, 1, c), name, path) for i, m in enumerate(order)})
        elif info.architecture == "rwkv7":
            _map_v7(out, blk, layer, suffix, t, c, n, name, path)
        else:
            _map_v6(out, blk, suffix, t, c, n, name, path)
    return out


def _unknown(path: str | os.PathLike[str], name: str, arch: str) -> CheckpointError:
    return CheckpointError(path, f"GGUF tensor {name!r} is not part of an {arch} model")


def _reshape(t: Any, shape: tuple[int, ...], name: str, path: Any) -> Any:
    """A reshape the metadata's sizes ask for; a tensor of another size is a bad file, not a torch error."""
    if math.prod(t.shape) != math.prod(shape):
        raise CheckpointError(path, f"GGUF tensor {name!r} has shape {list(t.shape)}, not the "
                                    f"{math.prod(shape):,} values the metadata's sizes give")
    return t.reshape(*shape)


def _matrix(t: Any, dims: int, name: str, path: Any) -> Any:
    if t.dim() != dims:
        raise CheckpointError(path, f"GGUF tensor {name!r} has shape {list(t.shape)}; expected {dims} dimensions")
    return t


def _map_v7(out: dict, blk: str, layer: int, suffix: str, t: Any, c: int, n: int, name: str, path: Any) -> None:
    if layer == 0 and suffix in ("time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight"):
        return  # the converter's dummies (copies of time_mix_a*): layer 0's value is v_first itself
    if suffix in _V7_VECTORS:
        out[blk + _V7_VECTORS[suffix]] = _reshape(t, (1, 1, c), name, path)
    elif suffix in _V7_LORA:
        out[blk + _V7_LORA[suffix]] = _matrix(t, 2, name, path).transpose(0, 1)  # [out, in] -> BlinkDL [in, out]
    elif suffix == "time_mix_r_k.weight":
        out[blk + "att.r_k"] = _reshape(t, (c // n, n), name, path)
    else:
        raise _unknown(path, name, "rwkv7")


def _map_v6(out: dict, blk: str, suffix: str, t: Any, c: int, n: int, name: str, path: Any) -> None:
    if suffix in _V6_VECTORS:
        out[blk + _V6_VECTORS[suffix]] = t.reshape(1, 1, -1)
    elif suffix in _V6_LORA:
        out[blk + _V6_LORA[suffix]] = _matrix(t, 2, name, path).transpose(0, 1)
    elif suffix == "time_mix_w2.weight":
        # stored [5, C, D] (each slice transposed); BlinkDL keeps [5, D, C]: out[i, d, c] = t[i, c, d]
        five, width, rank = _matrix(t, 3, name, path).shape
        by_width = t.transpose(0, 1).reshape(width, five * rank)  # [C, 5D]: row c holds t[i, c, d] at i*D + d
        out[blk + "att.time_maa_w2"] = by_width.transpose(0, 1).reshape(five, rank, width)
    elif suffix == "time_mix_first.weight":
        out[blk + "att.time_faaaa"] = _reshape(t, (c // n, n), name, path)
    else:
        raise _unknown(path, name, "rwkv6")


# --------------------------------------------------------------------------------------------------
# Tokenizer: the World vocabulary, as llama.cpp's converter writes it into the metadata
# --------------------------------------------------------------------------------------------------


@functools.cache  # parsed once per process: 65,529 lines
def world_token_texts() -> tuple[str, ...]:
    """The token list llama.cpp's converter writes for the World vocab v20230424: `<s>`, then each token as the
    text of its Python bytes literal without `b'...'`, then `[PAD<i>]` up to the model's vocabulary size."""
    from rwkv_deploy.tokenization.world import WORLD_VOCAB_FILE, read_world_vocab

    vocab = read_world_vocab(WORLD_VOCAB_FILE)
    return ("<s>", *(repr(vocab[i])[2:-1] for i in range(1, max(vocab) + 1)))


def check_vocabulary(table: GGUFTable) -> str | None:
    """"world" when the metadata carries the RWKV World vocab we package, None when it has no vocabulary;
    any other vocabulary is refused, so that an export never packages a tokenizer the model was not made for."""
    model = table.metadata.get("tokenizer.ggml.model")
    tokens = table.metadata.get("tokenizer.ggml.tokens")
    if model is None and tokens is None:
        return None
    if model != "rwkv":
        raise CheckpointError(table.path, f"GGUF tokenizer {str(model)[:40]!r} is not the RWKV World vocabulary; "
                                          "we read RWKV GGUF files with the World tokenizer only")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(table.path, "GGUF tokenizer 'rwkv' without a list of tokens (tokenizer.ggml.tokens)")
    expected = list(world_token_texts())
    pads = [f"[PAD{i}]" for i in range(len(expected), len(tokens))]
    if tokens != expected + pads:
        first = next((i for i, (a, b) in enumerate(zip(tokens, expected + pads)) if a != b),
                     min(len(tokens), len(expected)))
        raise CheckpointError(table.path, f"GGUF World vocabulary differs from rwkv_vocab_v20230424 (first at token "
                                          f"{first}); not the tokenizer we package")
    return "world"


# --------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------


def read_gguf(path: str | os.PathLike[str]) -> dict[str, LazyTensor]:
    """A GGUF RWKV-6/7 file as a BlinkDL-format float32 state dict, each tensor read and dequantized when loaded."""
    table = read_gguf_table(path)
    check_vocabulary(table)
    info = model_info(table)
    raw = {name: LazyTensor(entry.shape, torch.float32, functools.partial(load_gguf_tensor, table.path, entry))
           for name, entry in table.tensors.items()}
    return gguf_to_blinkdl(raw, info, table.path)


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file starting with the GGUF magic; cheap enough to sniff formats."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == MAGIC
