"""State on disk: the initial-state file a state-tuned package ships (`init_file`), and the state file
format a runtime saves a conversation's state in (`RecurrentState.save`) and loads it back from.

A state file is an .npz holding a JSON header (format tag, the graph sha256 of the model the state
belongs to, each tensor's name, shape and dtype) and the tensors as `t0000`, `t0001`, ... (state names may
hold characters zip member names dislike). Only numpy is needed: Node.js, C and the browser can read the
same files with any zip reader.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rwkv_deploy import limits
from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import UnsafePathError, open_regular_file, write_atomically

from .manifest import Manifest, StateEntry
from .names import BATCH_AXIS, MAX_BATCH, STATE_FILE_FORMAT, STATE_FILE_VERSION, STEP_GRAPH
from .schema import SchemaError, parse_json

_HEADER_KEY = "__header__"


class StateError(RefusedError, ValueError):
    """A state that does not fit the model: wrong tensors, shapes, dtypes, or another model's file."""


def concrete_shape(entry: StateEntry, batch: int) -> tuple[int, ...]:
    """The entry's shape with the batch axis set to `batch`."""
    return tuple(batch if d == BATCH_AXIS else int(d) for d in entry.shape)


def graph_sha256(manifest: Manifest, graph: str = STEP_GRAPH) -> str | None:
    """The identity of the model a state belongs to: the hash of its graph file."""
    return manifest.files.get(manifest.graphs[graph].path) if graph in manifest.graphs else None


def write_state_file(path: str | os.PathLike, names: Sequence[str], arrays: Sequence[np.ndarray],
                     graph: str | None) -> None:
    """Write state tensors (batch first, manifest order) for the model with graph sha256 `graph`,
    atomically: a crash leaves the old file."""
    header = {
        "format": STATE_FILE_FORMAT, "format_version": STATE_FILE_VERSION, "graph_sha256": graph,
        "tensors": [{"name": n, "shape": list(a.shape), "dtype": a.dtype.name} for n, a in zip(names, arrays)],
    }
    payload = {_HEADER_KEY: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload.update({f"t{k:04d}": a for k, a in enumerate(arrays)})
    write_atomically(path, lambda f: np.savez(f, **payload))


def read_npz(source: str | os.PathLike | BinaryIO, wanted: Mapping[str, tuple[tuple[int, ...], str]] | None,
             where: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of an .npz file (path or seekable stream): each member's .npy header (shape, dtype) is checked
    against `wanted` (name -> (shape, dtype)) and the size cap before its data is read or decompressed, so
    a small file cannot declare gigabytes. Members not in `wanted` are skipped (all read when None).
    StateError names `where` and the problem: not a zip, truncated, encrypted, another shape or dtype."""
    cap = limits.max_state_bytes() if max_bytes is None else max_bytes
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name == info.filename or (wanted is not None and name not in wanted) or name in arrays:
                    continue
                if info.flag_bits & 0x1:
                    raise StateError(f"{where}: member {info.filename} is encrypted")
                with zf.open(info) as f:
                    arrays[name] = _read_npy(f, name, None if wanted is None else wanted[name], where, cap)
    except StateError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, KeyError, TypeError, OverflowError) as exc:
        raise StateError(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return arrays


def _read_npy(f: BinaryIO, name: str, wanted: tuple[tuple[int, ...], str] | None, where: str,
              cap: int) -> np.ndarray:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise StateError(f"{where}: array {name!r} has .npy format version {version}, not 1.0 or 2.0")
    if dtype.hasobject or dtype.kind not in "fiub":
        raise StateError(f"{where}: array {name!r} has dtype {dtype}, not a numeric dtype")
    if wanted is not None and (tuple(shape), dtype.name) != (tuple(wanted[0]), wanted[1]):
        raise StateError(f"{where}: array {name!r} is {dtype.name} {list(shape)}, expected {wanted[1]} "
                         f"{list(wanted[0])}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > cap:
        raise StateError(f"{where}: array {name!r} declares {nbytes / limits.GIB:.1f} GiB, more than the "
                         f"{cap / limits.GIB:.1f} GiB cap (raise it with {limits.STATE_BYTES_ENV})")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise StateError(f"{where}: array {name!r} is truncated ({len(data)} of {nbytes} bytes)")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def check_finite(array: np.ndarray, what: str) -> None:
    """StateError naming `what` when a float array holds NaN or infinity (a state must be finite)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = "NaN" if np.isnan(array).any() else "infinite values"
        raise StateError(f"{what} contains {bad}")


def read_state_file(path: str | os.PathLike, manifest: Manifest) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """(names, arrays) of a file written by `write_state_file` for this package's model; StateError if the
    file is not one, belongs to another model, its tensors are not the manifest's, or hold NaN/infinity.
    Every size is checked against the manifest before the data is read."""
    where = str(path)
    try:
        with open_regular_file(path, follow_links=True) as f:
            header = _check_header(_read_header(f, where), where)
            if header["format"] != STATE_FILE_FORMAT or header["format_version"] != STATE_FILE_VERSION:
                raise StateError(f"{where}: not an rwkv-deploy state file of format version {STATE_FILE_VERSION}")
            expected = graph_sha256(manifest)
            if header["graph_sha256"] != expected:
                raise StateError(f"{where}: state was saved from another model (graph sha256 "
                                 f"{str(header['graph_sha256'])[:12]}, this package's graph is {str(expected)[:12]})")
            names = tuple(t["name"] for t in header["tensors"])
            if names != tuple(e.name for e in manifest.state):
                raise StateError(f"{where}: state tensors {list(names)[:3]}... do not match the manifest's")
            batch = header["tensors"][0]["shape"][0] if header["tensors"] else 1
            if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
                raise StateError(f"{where}: batch {batch!r} is not in 1..{MAX_BATCH}")
            wanted = {f"t{k:04d}": (concrete_shape(e, batch), e.dtype) for k, e in enumerate(manifest.state)}
            total = sum(math.prod(s) * np.dtype(d).itemsize for s, d in wanted.values())
            if total > limits.max_state_bytes():
                raise StateError(f"{where}: {batch} sequences of this model's state are {total / limits.GIB:.1f} GiB, "
                                 f"more than the cap (raise it with {limits.STATE_BYTES_ENV})")
            f.seek(0)
            arrays = read_npz(f, wanted, where)
    except OSError as exc:
        raise StateError(f"{where}: cannot read the state file ({exc.strerror or exc})") from None
    except UnsafePathError as exc:
        raise StateError(str(exc)) from None
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise StateError(f"{where}: has no tensor {missing[0]} (state {names[int(missing[0][1:])]!r})")
    values = [arrays[k] for k in wanted]
    for name, value in zip(names, values):
        check_finite(value, f"{where}: state tensor {name!r}")
    return names, values


def _read_header(f: BinaryIO, where: str) -> Any:
    """The JSON header of a state file (the uint8 array `__header__`), read capped."""
    try:
        with zipfile.ZipFile(f) as zf:
            member = f"{_HEADER_KEY}.npy"
            if member not in zf.namelist():
                raise StateError(f"{where}: not an rwkv-deploy state file (no {_HEADER_KEY})")
            with zf.open(member) as m:
                array = _read_npy(m, _HEADER_KEY, None, where, limits.JSON_BYTES)
    except StateError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, RuntimeError,
            TypeError, OverflowError) as exc:
        raise StateError(f"{where}: not an rwkv-deploy state file ({type(exc).__name__}: {exc})") from None
    if array.dtype != np.uint8 or array.ndim != 1:
        raise StateError(f"{where}: not an rwkv-deploy state file (its header is not text)")
    try:
        return parse_json(array.tobytes(), f"{where} (header)")
    except SchemaError as exc:
        raise StateError(str(exc)) from None


def _check_header(header: Any, where: str) -> dict[str, Any]:
    """The header's fields with their types checked (anything else is not one of our state files)."""
    def bad(what: str) -> StateError:
        return StateError(f"{where}: not an rwkv-deploy state file ({what})")

    if not isinstance(header, dict):
        raise bad("header is not an object")
    for key in ("format", "format_version", "graph_sha256", "tensors"):
        if key not in header:
            raise bad(f"header lacks {key!r}")
    if not isinstance(header["tensors"], list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
            and t["shape"] for t in header["tensors"]):
        raise bad("header's tensors are not a list of {name, shape, dtype}")
    if header["graph_sha256"] is not None and not isinstance(header["graph_sha256"], str):
        raise bad("graph_sha256 is not a string")
    return header


def load_initial_arrays(manifest: Manifest, package_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-sequence initial values of the entries with an `init_file` (state-tuned models), by name: each
    array's shape and dtype checked against the manifest before it is read, and finite."""
    wanted_by_file: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
    for entry in manifest.state:
        if entry.init_file is not None:
            wanted_by_file.setdefault(entry.init_file, {})[entry.name] = (concrete_shape(entry, 1)[1:], entry.dtype)
    arrays: dict[str, np.ndarray] = {}
    for name, wanted in wanted_by_file.items():
        path = Path(package_dir) / name
        try:
            with open_regular_file(path) as f:
                found = read_npz(f, wanted, str(path))
        except (OSError, UnsafePathError) as exc:
            raise StateError(f"{path}: cannot read the initial state ({exc})") from None
        for state_name in wanted:
            if state_name not in found:
                raise StateError(f"{path}: has no array {state_name!r} (the initial value of that state tensor)")
            check_finite(found[state_name], f"{path}: initial state {state_name!r}")
            arrays[state_name] = found[state_name]
    return arrays
