"""Readers that turn a file on disk into a flat {key: tensor} dict, one small function per format.

Every failure becomes a `CheckpointError` naming the file and the problem in one line.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from rwkv_deploy import limits
from rwkv_deploy.errors import CheckpointError

TensorDict = dict[str, torch.Tensor]

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
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def read_pth(path: Path) -> TensorDict:
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
    return _unwrap(obj, path)


def read_safetensors(path: Path) -> TensorDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return _unwrap(load_file(str(path), device="cpu"), path)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read ({exc.strerror or exc})") from None
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({(str(exc).splitlines() or [''])[0]})") from None


def read_hf_directory(path: Path) -> TensorDict:
    """A Hugging Face model directory: config.json plus (possibly sharded) safetensors or .bin weights."""
    if not (path / "config.json").is_file():
        raise CheckpointError(path, "a directory, but not a Hugging Face model (no config.json)")
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", read_pth)):
        index = path / index_name
        if index.is_file():
            tensors: TensorDict = {}
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


def read_tensors(path: str | os.PathLike) -> TensorDict:
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
        return read_rwkvcpp(p)
    if is_gguf_file(p):
        return read_gguf(p)
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    return read_pth(p)
