"""Readers that turn a file on disk into a flat {key: LazyTensor} dict, one small function per format.

Nothing is read beyond each file's header until a tensor is loaded, so a checkpoint of billions of parameters
costs no memory to open (`lazy.py`). safetensors tensors are read with plain file reads at their offsets;
PyTorch files are memory-mapped, and a loaded tensor's pages are handed back to the kernel (`_drop_pages`)
so streaming a whole checkpoint never keeps it resident. Every failure becomes a `CheckpointError` naming
the file and the problem in one line.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import zipfile
from pathlib import Path

import torch

from rwkv_deploy import limits
from rwkv_deploy.errors import CheckpointError

from .lazy import LazyTensor, as_lazy

TensorDict = dict[str, torch.Tensor]
LazyDict = dict[str, LazyTensor]

# Wrappers some training scripts put around the weights, and prefixes added by DDP / torch.compile.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _unwrap(obj: object, path: Path) -> TensorDict:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(path, f"not a checkpoint: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "not a checkpoint: the file holds no tensors")
    return _strip_prefixes(tensors)


def _strip_prefixes(tensors: dict) -> dict:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def read_pth(path: Path) -> LazyDict:
    """A PyTorch `.pth`/`.bin` file, loaded with weights_only=True and memory-mapped where the format allows."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read ({exc.strerror or exc})") from None
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # neither a zip archive nor a legacy pickle
        raise CheckpointError(path, "not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    is_complete_zip = zipfile.is_zipfile(path)
    if magic[:2] == b"PK" and not is_complete_zip:
        raise CheckpointError(path, "truncated or corrupt PyTorch file (zip archive without its central directory)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_complete_zip)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({msg})") from None
    except Exception as exc:  # unpickling refused by weights_only
        msg = str(exc).strip().splitlines()[0]
        raise CheckpointError(path, f"not a plain weights file ({type(exc).__name__}: {msg})") from None
    tensors = _unwrap(obj, path)
    check_storage(tensors, path)
    return {k: LazyTensor(t.shape, t.dtype, _mapped_loader(t)) for k, t in tensors.items()} if is_complete_zip \
        else as_lazy(tensors)


def check_storage(tensors: TensorDict, path: Path) -> None:
    """Refuse tensors that declare more values than the file stores for them: a stride-0 or overlapping view
    (a 1-element storage expanded to a billion rows) would make every later copy allocate that much."""
    for key, t in tensors.items():
        if t.device.type == "meta":
            raise CheckpointError(path, f"{key} holds no data (a meta tensor)")
        stored = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if t.numel() * t.element_size() > max(stored, 0):
            raise CheckpointError(path, f"{key} declares shape {list(t.shape)} ({t.numel():,} values) but the file "
                                        f"stores {max(stored, 0):,} bytes for it (an expanded or overlapping view); "
                                        "not a real checkpoint")


def _mapped_loader(tensor: torch.Tensor):
    """Load a memory-mapped tensor as an in-memory copy, then drop its mapped pages from this process."""
    def load() -> torch.Tensor:
        copy = tensor.clone()
        _drop_pages(tensor)
        return copy
    return load


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def _drop_pages(tensor: torch.Tensor) -> None:
    """madvise(MADV_DONTNEED) the pages of a memory-mapped, read-only tensor: the kernel keeps them in its file
    cache (re-read on the next access) but they no longer count as this process's memory. Best effort (Linux)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes < _PAGE or _LIBC is None:
        return
    start = tensor.data_ptr() // _PAGE * _PAGE
    end = -(-(tensor.data_ptr() + nbytes) // _PAGE) * _PAGE
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path: Path) -> LazyDict:
    """A safetensors file's header (checked: known dtypes, offsets inside the file, sizes that match the shapes);
    each tensor is read from its offset when loaded."""
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(path, f"truncated or corrupt safetensors file ({why})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt("no header")
            header_len = int.from_bytes(head, "little")
            if header_len > min(size - 8, limits.JSON_BYTES):
                raise corrupt(f"header of {header_len:,} bytes in a file of {size:,}")
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise corrupt(f"header is not JSON: {str(exc)[:80]}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    start = 8 + header_len
    tensors: LazyDict = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"entry {name[:80]!r} lacks a known dtype, a shape or data_offsets") from None
        if any(d < 0 for d in shape) or not 0 <= begin <= end or start + end > size:
            raise corrupt(f"{name[:80]} lies outside the file")
        if end - begin != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
            raise corrupt(f"{name[:80]} stores {end - begin:,} bytes for shape {shape}")
        tensors[name] = LazyTensor(shape, dtype, _file_range_loader(path, start + begin, shape, dtype))
    if not tensors:
        raise CheckpointError(path, "not a checkpoint: the file holds no tensors")
    return _strip_prefixes(tensors)


def _file_range_loader(path: Path, offset: int, shape: list[int], dtype: torch.dtype):
    """Read one tensor's bytes at `offset` with a plain read: nothing stays mapped once it is returned."""
    def load() -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(nbytes)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                got = f.readinto(buffer)
        except OSError as exc:
            raise CheckpointError(path, f"cannot read ({exc.strerror or exc})") from None
        if got != nbytes:
            raise CheckpointError(path, "truncated: the file ended while a tensor was read")
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)
    return load


def read_hf_directory(path: Path) -> LazyDict:
    """A Hugging Face model directory: config.json plus (possibly sharded) safetensors or .bin weights."""
    if not (path / "config.json").is_file():
        raise CheckpointError(path, "a directory, but not a Hugging Face model (no config.json)")
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", read_pth)):
        index = path / index_name
        if index.is_file():
            tensors: LazyDict = {}
            for shard in _shards(index):
                if not (path / shard).is_file():
                    raise CheckpointError(path / shard, f"missing: {index_name} lists it as a shard")
                tensors.update(reader(path / shard))
            return tensors
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_pth)):
        if (path / name).is_file():
            return reader(path / name)
    raise CheckpointError(path, "Hugging Face directory without model.safetensors or pytorch_model.bin")


def _shards(index: Path) -> list[str]:
    """The shard file names of a sharded HF checkpoint's index: plain names inside the folder only."""
    try:
        with open(index, "rb") as f:
            data = f.read(limits.JSON_BYTES + 1)
        if len(data) > limits.JSON_BYTES:
            raise CheckpointError(index, f"larger than {limits.JSON_BYTES // limits.MIB} MiB; not a shard index")
        weight_map = json.loads(data).get("weight_map")
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(index, f"cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError, AttributeError) as exc:
        raise CheckpointError(index, f"not a shard index (not a JSON object: {str(exc)[:80]})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index, "not a shard index (no weight_map object)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "weight_map values must be shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if "/" in shard or "\\" in shard or shard in ("", ".", "..") or "\0" in shard:
            raise CheckpointError(index, f"shard {shard[:80]!r} is not a file name inside the folder")
    return shards


def read_tensors(path: str | os.PathLike) -> LazyDict:
    """Dispatch on what the file is (by content, then by suffix), never on trust in the name alone."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file or directory")
    if p.is_dir():
        return read_hf_directory(p)
    if p.stat().st_size == 0:
        raise CheckpointError(p, "empty file")
    from .gguf import is_gguf_file, read_gguf
    from .rwkvcpp import is_rwkvcpp_file, read_rwkvcpp

    if is_rwkvcpp_file(p):
        return as_lazy(read_rwkvcpp(p))
    if is_gguf_file(p):
        return read_gguf(p)
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    return read_pth(p)
