"""State on disk: the initial-state file a state-tuned package ships (`init_file`), and the state file
format a runtime saves a conversation's state in (`RecurrentState.save`) and loads it back from.

A state file is an .npz holding a JSON header (format tag, the graph sha256 of the model the state
belongs to, each tensor's name, shape and dtype) and the tensors as `t0000`, `t0001`, ... (state names may
hold characters zip member names dislike). Only numpy is needed: Node.js, C and the browser can read the
same files with any zip reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.fileio import write_atomically

from .manifest import Manifest, StateEntry
from .names import BATCH_AXIS, STATE_FILE_FORMAT, STATE_FILE_VERSION, STEP_GRAPH

_HEADER_KEY = "__header__"


class StateError(RwkvDeployError, ValueError):
    """A state that does not fit the model: wrong tensors, shapes, dtypes, or another model's file."""

    exit_code = 2


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


def read_state_file(path: str | os.PathLike, manifest: Manifest) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """(names, arrays) of a file written by `write_state_file` for this package's model; StateError if the
    file is not one, or belongs to another model, or its tensors are not the manifest's."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data[_HEADER_KEY]).decode())
            arrays = [data[f"t{k:04d}"] for k in range(len(header["tensors"]))]
    except (OSError, ValueError, KeyError) as exc:
        raise StateError(f"{path}: not an rwkv-deploy state file ({type(exc).__name__}: {exc})") from None
    if header.get("format") != STATE_FILE_FORMAT or header.get("format_version") != STATE_FILE_VERSION:
        raise StateError(f"{path}: not an rwkv-deploy state file of format version {STATE_FILE_VERSION}")
    expected = graph_sha256(manifest)
    if header["graph_sha256"] != expected:
        raise StateError(f"{path}: state was saved from another model (graph sha256 "
                         f"{str(header['graph_sha256'])[:12]}, this package's graph is {str(expected)[:12]})")
    names = tuple(t["name"] for t in header["tensors"])
    if names != tuple(e.name for e in manifest.state):
        raise StateError(f"{path}: state tensors {list(names)[:3]}... do not match the manifest's")
    return names, arrays


def load_initial_arrays(manifest: Manifest, package_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-sequence initial values of the entries with an `init_file` (state-tuned models), by name."""
    arrays: dict[str, np.ndarray] = {}
    for entry in manifest.state:
        if entry.init_file is None:
            continue
        path = Path(package_dir) / entry.init_file
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays[entry.name] = data[entry.name]
        except (OSError, ValueError, KeyError) as exc:
            raise StateError(f"{path}: cannot read the initial value of {entry.name} ({exc})") from None
    return arrays
